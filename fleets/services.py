"""Fleets: the active-bundle pointer, its append-only log, rollback, workflow assignment, secrets."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleets.models import Activation, Asset, Bundle, Fleet, FleetWorkflow
from fleets.needs import Entry, needs_missing, workflow_needs
from renders.comfy import ComfyClient, ComfyError
from renders.models import ComfyInstance
from renders.workflows import WorkflowError
from workflows.services import workflow_graph

log = logging.getLogger("bookrender.fleets")


class ActivationError(ValueError):
    """An activation refused, with a message that says what is missing."""


def new_secret() -> str:
    return secrets.token_hex(32)


def fleet_create(*, slug: str, name: str = "") -> Fleet:
    return Fleet.objects.create(slug=slug, name=name or slug, secret=new_secret())


def fleet_secret_rotate(*, fleet: Fleet, grace_sec: float = 3600) -> str:
    """A new secret; the old one keeps working for ``grace_sec`` while hosts are given the new one."""
    new = new_secret()
    Fleet.objects.filter(pk=fleet.pk).update(
        secret=new,
        previous_secret=fleet.secret,
        previous_secret_until=timezone.now() + timedelta(seconds=grace_sec),
    )
    fleet.refresh_from_db()
    log.warning("fleet secret rotated", extra={"event": "fleet.secret_rotated", "fleet": fleet.slug})
    return new


def fleet_workflow_assign(
    *, fleet: Fleet, workflow_slug: str, object_info: dict[str, Any] | None = None
) -> FleetWorkflow:
    """Let the fleet run a workflow. Refused (ActivationError) when the fleet's active bundle lacks
    an asset the workflow needs: its hosts would get pages they cannot render."""
    workflow_graph(workflow_slug)  # WorkflowError for a workflow nobody registered
    assignment_check(fleet=fleet, workflow_slug=workflow_slug, object_info=object_info)
    assignment, _ = FleetWorkflow.objects.get_or_create(fleet=fleet, workflow_slug=workflow_slug)
    return assignment


def assignment_check(*, fleet: Fleet, workflow_slug: str, object_info: dict[str, Any] | None = None) -> None:
    """ActivationError when the fleet's active bundle lacks what ``workflow_slug`` needs (nothing
    to check while the fleet has no active bundle: its activation will check)."""
    if fleet.active_bundle_id is None:
        return
    bundle = Bundle.objects.get(pk=fleet.active_bundle_id)
    info = object_info if object_info is not None else object_info_any()
    missing = bundle_missing_for(fleet=fleet, bundle=bundle, object_info=info, slugs=[workflow_slug])
    if missing:
        raise ActivationError(f"the active bundle {bundle.name!r} of {fleet.slug} cannot run it: " + "; ".join(missing))


def object_info_any() -> dict[str, Any]:
    """/object_info from the first enabled, up instance that answers (the activation check's
    reference for combo inputs and ComfyUI's own node classes)."""
    problems = []
    for url in ComfyInstance.objects.filter(enabled=True, state=ComfyInstance.State.UP).values_list("url", flat=True):
        client = ComfyClient(url, timeout=settings.COMFY_HTTP_TIMEOUT_SEC)
        try:
            return client.object_info_raw()
        except ComfyError as exc:
            problems.append(f"{url}: {exc}")
        finally:
            client.close()
    raise ActivationError(
        "no ComfyUI instance answered /object_info, which the activation check needs"
        + (f" ({'; '.join(problems)})" if problems else " (none is enabled and up)")
    )


def bundle_missing_for(
    *, fleet: Fleet, bundle: Bundle, object_info: dict[str, Any], slugs: list[str] | None = None
) -> list[str]:
    """What each workflow assigned to the fleet (or each of ``slugs``) needs and the bundle lacks,
    in words."""
    entries = [
        Entry(e.target_path, e.action, frozenset(e.asset.provided_node_classes()))
        for e in bundle.entries.select_related("asset")
    ]
    custom = set()
    for listed in Asset.objects.filter(kind=Asset.Kind.CUSTOM_NODE).values_list("node_classes", flat=True):
        custom |= {line.strip() for line in listed.splitlines() if line.strip()}
    problems = []
    for slug in slugs if slugs is not None else fleet.workflows.values_list("workflow_slug", flat=True):
        try:
            graph = workflow_graph(slug)
        except WorkflowError as exc:
            problems.append(f"workflow {slug!r}: {exc}")
            continue
        missing = needs_missing(
            workflow_needs(graph, object_info), object_info=object_info, entries=entries, custom_node_classes=custom
        )
        problems += [f"workflow {slug!r} needs {item}" for item in missing]
    return problems


def fleet_activate(*, fleet: Fleet, bundle: Bundle, by: str, object_info: dict[str, Any] | None = None) -> Activation:
    """Point the fleet at a published bundle that has everything its workflows need."""
    if not bundle.is_published:
        raise ActivationError(f"bundle {bundle.name!r} is not published")
    if fleet.workflows.exists():
        info = object_info if object_info is not None else object_info_any()
        missing = bundle_missing_for(fleet=fleet, bundle=bundle, object_info=info)
        if missing:
            raise ActivationError(f"bundle {bundle.name!r} cannot run on {fleet.slug}: " + "; ".join(missing))
    return _point(fleet=fleet, bundle=bundle, by=by, kind=Activation.Kind.ACTIVATE)


def fleet_rollback(*, fleet: Fleet, by: str) -> Activation:
    """Re-activate the bundle the fleet ran before the current one."""
    last = fleet.activations.filter(bundle=fleet.active_bundle_id).first() if fleet.active_bundle_id else None
    if last is None or last.previous_bundle is None:
        raise ActivationError(f"fleet {fleet.slug} has no previous bundle to roll back to")
    return _point(fleet=fleet, bundle=last.previous_bundle, by=by, kind=Activation.Kind.ROLLBACK)


def _point(*, fleet: Fleet, bundle: Bundle, by: str, kind: str) -> Activation:
    with transaction.atomic():
        locked = Fleet.objects.select_for_update().get(pk=fleet.pk)
        if locked.active_bundle_id == bundle.pk:
            raise ActivationError(f"bundle {bundle.name!r} is already active on {fleet.slug}")
        activation = Activation.objects.create(
            fleet=locked, bundle=bundle, previous_bundle_id=locked.active_bundle_id, kind=kind, by=by
        )
        Fleet.objects.filter(pk=fleet.pk).update(active_bundle=bundle)
    fleet.refresh_from_db()
    log.warning(
        "fleet bundle activated",
        extra={"event": f"fleet.{kind}", "fleet": fleet.slug, "bundle": bundle.pk, "by": by},
    )
    return activation
