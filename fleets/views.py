"""The host API: registration (signed with the fleet secret), then heartbeats, the active bundle's
manifest and its blobs (with the host's own token). A refused request learns nothing: 403 and a
fixed body, whatever the reason; the reason goes to the server's log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.core.files.storage import FileSystemStorage
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from fleets.assets import CHUNK, SHA256_RE, assets_storage
from fleets.bundles import BundleError, bundle_manifest
from fleets.hosts import InstanceReading, Refused, host_for_token, host_heartbeat, host_register, signed_request_check
from fleets.models import Asset, Bundle, BundleEntry, Fleet, Host
from renders.workflows import WorkflowError
from workflows.services import workflow_graph

log = logging.getLogger("bookrender.fleets")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _refused(reason: str, request: HttpRequest) -> JsonResponse:
    log.warning("fleet request refused", extra={"event": "host.refused", "reason": reason, "path": request.path})
    return JsonResponse({"error": "refused"}, status=403)


def _host_view(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        auth = request.headers.get("Authorization", "")
        host = host_for_token(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None
        if host is None:
            return _refused("no or unknown host token", request)
        return view(request, host, *args, **kwargs)

    return wrapper


@csrf_exempt
@require_POST
def register(request: HttpRequest) -> HttpResponse:
    try:
        fleet = signed_request_check(
            fleet_slug=request.headers.get("X-Fleet", ""),
            timestamp=request.headers.get("X-Timestamp", ""),
            nonce=request.headers.get("X-Nonce", ""),
            sig=request.headers.get("X-Signature", ""),
            method=request.method or "POST",
            path=request.path,
            body=request.body,
        )
    except Refused as exc:
        return _refused(str(exc), request)
    try:
        data = json.loads(request.body)
        if data.get("dry_run") is True:
            # A host's dry run registers nothing (and so leaves the running host's token alone):
            # under the fleet's signature it reads what an apply would apply.
            return _manifest_answer(request, fleet)
        host, token = host_register(fleet=fleet, name=str(data["host"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return JsonResponse({"error": f"bad registration: {exc}"}, status=400)
    return JsonResponse({"host_id": host.pk, "fleet": fleet.slug, "token": token})


@csrf_exempt
@require_POST
@_host_view
def heartbeat(request: HttpRequest, host: Host) -> HttpResponse:
    try:
        data = json.loads(request.body)
        instances = [
            InstanceReading(
                url=str(item["url"]),
                gpu_index=item.get("gpu_index"),
                queue_remaining=item.get("queue_remaining"),
                vram_total_mb=item.get("vram_total_mb"),
                vram_free_mb=item.get("vram_free_mb"),
            )
            for item in data.get("instances", [])
        ]
        host_heartbeat(
            host=host,
            state=str(data["state"]),
            applied_bundle_id=data.get("applied_bundle_id"),
            instances=instances,
            error=str(data.get("error") or ""),
            apply_seconds=data.get("apply_seconds"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        return JsonResponse({"error": f"bad heartbeat: {exc}"}, status=400)
    host.fleet.refresh_from_db()
    return JsonResponse({"active_bundle_id": host.fleet.active_bundle_id})


@require_GET
@_host_view
def manifest(request: HttpRequest, host: Host) -> HttpResponse:
    return _manifest_answer(request, host.fleet)


def _manifest_answer(request: HttpRequest, fleet: Fleet) -> JsonResponse:
    """The fleet's active bundle: its manifest as stored (the host checks its sha256), a URL for
    each blob, and the node classes the fleet's workflows use (the host's health gate)."""
    bundle = fleet.active_bundle
    if bundle is None:
        return JsonResponse({"error": f"fleet {fleet.slug} has no active bundle"}, status=404)
    try:
        published = bundle_manifest(bundle=bundle)
    except BundleError as exc:
        log.error("manifest unreadable", extra={"event": "bundle.manifest_bad", "error": str(exc)})
        return JsonResponse({"error": str(exc)}, status=500)
    storage = assets_storage()
    urls: dict[str, str] = {}
    for entry in published.manifest["entries"]:
        if isinstance(storage, FileSystemStorage):
            urls[entry["sha256"]] = request.build_absolute_uri(reverse("fleets:blob", args=[entry["sha256"]]))
        else:
            urls[entry["sha256"]] = storage.url(entry["key"])  # presigned: the host goes to S3 directly
    node_classes: set[str] = set()
    for slug in fleet.workflows.values_list("workflow_slug", flat=True):
        try:
            node_classes |= {node["class_type"] for node in workflow_graph(slug).values()}
        except WorkflowError:
            continue
    return JsonResponse(
        {
            "bundle_id": bundle.pk,
            "manifest_sha256": bundle.manifest_sha256,
            "manifest": published.raw.decode(),
            "urls": urls,
            "node_classes": sorted(node_classes),
        }
    )


@require_GET
@_host_view
def blob(request: HttpRequest, host: Host, sha256: str) -> HttpResponse | StreamingHttpResponse:
    """One asset's bytes, with Range (``bytes=N-`` or ``bytes=N-M``) for resumed downloads. Only
    assets of a bundle the host's fleet has had active."""
    if not SHA256_RE.match(sha256):
        return JsonResponse({"error": "not a sha256"}, status=400)
    fleet_bundles = Bundle.objects.filter(activations__fleet=host.fleet)
    asset = Asset.objects.filter(
        sha256=sha256, pk__in=BundleEntry.objects.filter(bundle__in=fleet_bundles).values("asset")
    ).first()
    if asset is None:
        return _refused(f"blob {sha256} is in no bundle of fleet {host.fleet.slug}", request)
    start, end = 0, asset.size - 1
    match = _RANGE_RE.match(request.headers.get("Range", ""))
    if match:
        start = int(match.group(1))
        end = min(int(match.group(2)), end) if match.group(2) else end
        if start > end:
            unsatisfiable = HttpResponse(status=416)
            unsatisfiable["Content-Range"] = f"bytes */{asset.size}"
            return unsatisfiable
    stored = assets_storage().open(asset.key, "rb")
    stored.seek(start)

    def chunks() -> Iterator[bytes]:
        left = end - start + 1
        try:
            while left > 0 and (chunk := stored.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk
        finally:
            stored.close()

    response = StreamingHttpResponse(chunks(), status=206 if match else 200, content_type="application/octet-stream")
    response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    if match:
        response["Content-Range"] = f"bytes {start}-{end}/{asset.size}"
    return response
