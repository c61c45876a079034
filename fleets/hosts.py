"""GPU hosts: signed registration, their own tokens, heartbeats, and going stale and offline.

A host signs its registration with its fleet's secret::

    X-Fleet: <fleet slug>   X-Timestamp: <unix seconds>   X-Nonce: <16-64 hex chars>
    X-Signature: hex(HMAC-SHA256(secret, "<timestamp>\\n<nonce>\\n<METHOD>\\n<path>\\n" + body))

A timestamp more than BOOKRENDER_FLEET_CLOCK_SKEW_SEC away, or a nonce seen before, is refused.
Registration answers a token of the host's own (only its sha256 is kept); heartbeats, the
manifest and the blobs take ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from fleets.models import Bundle, Fleet, Host, HostNonce
from ops.assetsync import sign as signature
from renders.models import ComfyInstance

log = logging.getLogger("bookrender.fleets")
NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
OFFLINE_NOTE = "host offline: no heartbeat"


class Refused(Exception):
    """A host request refused; the message is for the server's log, not for the caller."""


def signed_request_check(
    *, fleet_slug: str, timestamp: str, nonce: str, sig: str, method: str, path: str, body: bytes
) -> Fleet:
    """The fleet a correctly signed, fresh, first-seen request comes from; Refused otherwise."""
    fleet = Fleet.objects.filter(slug=fleet_slug).first()
    if fleet is None:
        raise Refused(f"unknown fleet {fleet_slug!r}")
    try:
        sent = int(timestamp)
    except ValueError:
        raise Refused("timestamp is not a whole number of seconds") from None
    now = timezone.now()
    if abs(now.timestamp() - sent) > settings.BOOKRENDER_FLEET_CLOCK_SKEW_SEC:
        raise Refused(f"stale timestamp ({now.timestamp() - sent:.0f} s off)")
    if not NONCE_RE.match(nonce):
        raise Refused("nonce must be 16 to 64 lowercase hex characters")
    secrets_ok = [fleet.secret]
    if fleet.previous_secret and fleet.previous_secret_until and fleet.previous_secret_until > now:
        secrets_ok.append(fleet.previous_secret)
    if not any(
        hmac.compare_digest(
            signature(secret=s, timestamp=timestamp, nonce=nonce, method=method, path=path, body=body), sig
        )
        for s in secrets_ok
    ):
        raise Refused("bad signature")
    # Only after the signature: an attacker cannot fill the table. A nonce is remembered for
    # twice the skew, which covers every timestamp still accepted.
    HostNonce.objects.filter(seen_at__lt=now - timedelta(seconds=2 * settings.BOOKRENDER_FLEET_CLOCK_SKEW_SEC)).delete()
    try:
        with transaction.atomic():
            HostNonce.objects.create(fleet=fleet, nonce=nonce, seen_at=now)
    except IntegrityError:
        raise Refused("replayed nonce") from None
    return fleet


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def host_register(*, fleet: Fleet, name: str) -> tuple[Host, str]:
    """A host's row and a fresh token (a host re-registering after a reboot gets a new one)."""
    if not HOST_NAME_RE.match(name):
        raise ValueError("host name: letters, digits, '.', '_' or '-', up to 100")
    token = secrets.token_urlsafe(32)
    host, created = Host.objects.update_or_create(
        fleet=fleet, name=name, defaults={"token_sha256": token_sha256(token), "last_seen_at": timezone.now()}
    )
    # A host new to the fleet is worth an operator's look; a known one registers again on every
    # asset-sync run and after each reboot, which is routine.
    log.log(
        logging.WARNING if created else logging.INFO,
        "fleet host registered",
        extra={"event": "host.registered", "fleet": fleet.slug, "host": name, "new": created},
    )
    return host, token


def host_for_token(token: str) -> Host | None:
    if not token:
        return None
    return Host.objects.select_related("fleet").filter(token_sha256=token_sha256(token)).first()


@dataclass(frozen=True)
class InstanceReading:
    url: str
    gpu_index: int | None = None
    queue_remaining: int | None = None
    vram_total_mb: int | None = None
    vram_free_mb: int | None = None


def host_heartbeat(
    *,
    host: Host,
    state: str,
    applied_bundle_id: int | None,
    instances: list[InstanceReading],
    error: str = "",
    apply_seconds: float | None = None,
) -> None:
    """Record a host's report: its state, applied bundle and instances (registered as fleet
    instances of this host). A host back from offline gets its instances back."""
    if state not in (Host.State.APPLYING, Host.State.READY, Host.State.FAILED):
        raise ValueError(f"state must be applying, ready or failed, not {state!r}")
    if applied_bundle_id is not None and not Bundle.objects.filter(pk=applied_bundle_id).exists():
        raise ValueError(f"no bundle {applied_bundle_id}")
    now = timezone.now()
    fields: dict[str, Any] = {"state": state, "applied_bundle_id": applied_bundle_id, "last_seen_at": now}
    fields["last_error"] = error[:4000]
    if apply_seconds is not None:
        fields["last_apply_seconds"] = apply_seconds
    with transaction.atomic():
        Host.objects.filter(pk=host.pk).update(**fields)
        for reading in instances:
            instance, _ = ComfyInstance.objects.get_or_create(
                url=reading.url.rstrip("/"),
                defaults={
                    "registration_source": ComfyInstance.Source.FLEET,
                    "host": host,
                    "gpu_index": reading.gpu_index,
                },
            )
            if instance.registration_source != ComfyInstance.Source.FLEET or (instance.host_id not in (None, host.pk)):
                log.warning("instance URL claimed by another source", extra={"url": instance.url, "host": host.name})
                continue
            update: dict[str, Any] = {"host": host, "last_seen_at": now, "gpu_index": reading.gpu_index}
            if reading.queue_remaining is not None:
                update.update(
                    queue_remaining=reading.queue_remaining,
                    vram_total_mb=reading.vram_total_mb,
                    vram_free_mb=reading.vram_free_mb,
                    reading_source="host",
                    readings_at=now,
                )
            ComfyInstance.objects.filter(pk=instance.pk).update(**update)
            # Back from offline: the prober decides when it is up again.
            ComfyInstance.objects.filter(pk=instance.pk, enabled=False, last_error=OFFLINE_NOTE).update(
                enabled=True, last_error="", state=ComfyInstance.State.DOWN, next_probe_at=None
            )


def hosts_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Hosts silent for BOOKRENDER_FLEET_HOST_STALE_SEC go stale; for ..._OFFLINE_SEC, offline:
    their instances are disabled, so routing sends them nothing, and the pages they held resume
    elsewhere when their leases run out (the sweeper, renders.services.pages_sweep)."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.BOOKRENDER_FLEET_HOST_STALE_SEC)
    offline_before = now - timedelta(seconds=settings.BOOKRENDER_FLEET_HOST_OFFLINE_SEC)
    offline_ids = list(
        Host.objects.filter(last_seen_at__lt=offline_before)
        .exclude(state=Host.State.OFFLINE)
        .values_list("pk", flat=True)
    )
    with transaction.atomic():
        offline = Host.objects.filter(pk__in=offline_ids).update(state=Host.State.OFFLINE)
        ComfyInstance.objects.filter(host_id__in=offline_ids, enabled=True).update(
            enabled=False, last_error=OFFLINE_NOTE, state=ComfyInstance.State.DOWN
        )
        stale = (
            Host.objects.filter(last_seen_at__lt=stale_before)
            .exclude(state__in=[Host.State.STALE, Host.State.OFFLINE])
            .update(state=Host.State.STALE)
        )
    if stale or offline:
        log.warning("fleet hosts silent", extra={"event": "host.silent", "stale": stale, "offline": offline})
    return {"stale": stale, "offline": offline}
