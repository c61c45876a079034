"""Which ComfyUI instance gets an attempt, and whether it is healthy.

One Celery queue feeds every worker; an instance's capacity is its slots, held as expiring leases
in PostgreSQL (``InstanceSlot``). Each attempt takes a slot on the healthy instance with the most
room, so every GPU keeps one prompt running and one queued while pages wait, and a resumed attempt
goes back to the instance that has its prompt. An instance that fails 3 times in a row, or fails a
probe, is down and gets no work until a probe succeeds again (probes back off from 1 s to 30 s).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from books.models import BookPage
from renders.comfy import ComfyClient, ComfyError
from renders.gpu import COMFY_BASE_PORT, instance_gpu_index, nvml_read
from renders.lease import db_in
from renders.models import ComfyInstance, InstanceSlot

log = logging.getLogger("bookrender.routing")
FAILURES_TO_DOWN = 3
PROBE_INTERVAL_UP_SEC = 5.0
# A down instance is probed again after 1, 2, 4 s, then every 4 s: a restarting ComfyUI (14-38 s
# for a real one) is found within seconds of answering. Workers' gates and successful calls mark an
# instance up even sooner.
PROBE_BACKOFF_MIN_SEC, PROBE_BACKOFF_MAX_SEC = 1.0, 4.0
RETIRED = "retired: no longer in COMFYUI_URLS"


def instances_sync() -> None:
    """Make sure every URL in COMFYUI_URLS has an instance row (the admin may add more), and retire
    the rows that came from COMFYUI_URLS and are no longer in it: disabled, with the reason."""
    urls = set(settings.COMFYUI_URLS)
    known = set(ComfyInstance.objects.values_list("url", flat=True))
    for url in settings.COMFYUI_URLS:
        if url not in known:
            port = urlsplit(url).port or COMFY_BASE_PORT
            index = port - COMFY_BASE_PORT if 0 <= port - COMFY_BASE_PORT < 64 else None
            ComfyInstance.objects.get_or_create(
                url=url, defaults={"gpu_index": index, "registration_source": ComfyInstance.Source.SETTINGS}
            )
    # A row seeded from the setting comes back to life when its URL returns to it.
    ComfyInstance.objects.filter(
        url__in=urls, registration_source=ComfyInstance.Source.SETTINGS, enabled=False, last_error=RETIRED
    ).update(enabled=True, last_error="", state=ComfyInstance.State.DOWN, next_probe_at=None)
    retired = (
        ComfyInstance.objects.filter(registration_source=ComfyInstance.Source.SETTINGS, enabled=True)
        .exclude(url__in=urls)
        .update(enabled=False, last_error=RETIRED)
    )
    if retired:
        log.warning("instances retired", extra={"event": "instance.retired", "count": retired})


# What routing reads of each instance (and the worker of the one chosen: its GPU index, and
# whether it was healthy when the page took its slot).
SLOT_FIELDS = ("url", "gpu_index", "host_id", "slots", "enabled", "state", "consecutive_failures", "queue_remaining")


def slot_acquire(
    *, page: BookPage, attempt: int, claim: uuid.UUID | None, avoid: str = "", resume_on: str = "", prefer: str = ""
) -> ComfyInstance | None:
    """Lease a slot for this claim, or None when no healthy instance has room (the page waits).

    ``resume_on``: the instance that already has this attempt's prompt; it is taken even when
    full, because the prompt already occupies its place there. ``prefer``: taken among equally
    loaded instances (the one this worker process used last). A page has one slot row: a new
    claim takes over the row of an earlier claim of the page, whose holder can then neither renew
    nor release it."""
    locked = ComfyInstance.objects.select_for_update().only(*SLOT_FIELDS).order_by("pk")
    with transaction.atomic():
        # Locking the instance rows serialises slot counting across workers (a few ms each). The
        # leases are counted in a statement of their own, after the lock: its snapshot then
        # includes every slot taken by whoever held the lock before (a count in the locking
        # statement would see the rows as they were before it waited).
        rows = list(locked)
        if not set(settings.COMFYUI_URLS) <= {i.url for i in rows}:
            instances_sync()  # a URL new in COMFYUI_URLS: only then a second query
            rows = list(locked.all())
        instances = [i for i in rows if i.enabled]
        if resume_on:
            chosen = next((i for i in instances if i.url == resume_on), None)
            if chosen is None or chosen.state != ComfyInstance.State.UP:
                return None
        else:
            if any(i.host_id is not None for i in instances):
                capable = fleet_hosts_capable(workflow=page.book.workflow_version.workflow.slug)
                instances = [i for i in instances if i.host_id is None or i.host_id in capable]
            live = Counter(
                InstanceSlot.objects.filter(expires_at__gt=Now(), instance__in=instances)
                .exclude(page=page)
                .values_list("instance_id", flat=True)
            )
            open_ = [i for i in instances if i.state == ComfyInstance.State.UP and live[i.pk] < i.slots]
            candidates = [i for i in open_ if i.url != avoid] or open_
            if not candidates:
                return None
            # Least loaded first: fewest leases for its size, then the shortest ComfyUI queue.
            chosen = min(
                candidates,
                key=lambda i: (live[i.pk] / max(1, i.slots), i.queue_remaining or 0, i.url != prefer, i.pk),
            )
        # The page's one slot row, whoever held it before (an earlier claim or attempt): one
        # INSERT ... ON CONFLICT (page) DO UPDATE.
        InstanceSlot.objects.bulk_create(
            [
                InstanceSlot(
                    instance=chosen, page=page, attempt=attempt, claim=claim, expires_at=db_in(settings.COMFY_LEASE_SEC)
                )
            ],
            update_conflicts=True,
            unique_fields=["page"],
            update_fields=["instance", "attempt", "claim", "expires_at"],
        )
    return chosen


def fleet_hosts_capable(*, workflow: str) -> set[int]:
    """Fleet hosts that may take a page of this workflow: ready, in a fleet the workflow is
    assigned to, with the fleet's active bundle applied (activation checked that bundle has every
    asset the fleet's workflows need). Instances outside fleets run every workflow, as before."""
    from fleets.models import Host  # fleets depends on renders' models, not the other way round

    return set(
        Host.objects.filter(
            state=Host.State.READY,
            fleet__workflows__workflow_slug=workflow,
            applied_bundle_id=F("fleet__active_bundle_id"),
        ).values_list("pk", flat=True)
    )


def workflow_runnable(*, workflow: str) -> bool:
    """Whether any enabled instance could ever take this workflow (busy, down or applying counts;
    offline fleet hosts are disabled). False: the page would wait forever, so it says so instead."""
    from fleets.models import FleetWorkflow

    if ComfyInstance.objects.filter(enabled=True, host__isnull=True).exists():
        return True
    # COMFYUI_URLS rows are made by the first slot_acquire: a URL without a row yet counts.
    known = set(ComfyInstance.objects.filter(url__in=settings.COMFYUI_URLS).values_list("url", flat=True))
    if set(settings.COMFYUI_URLS) - known:
        return True
    fleets = FleetWorkflow.objects.filter(workflow_slug=workflow).values("fleet")
    return ComfyInstance.objects.filter(enabled=True, host__fleet__in=fleets).exists()


def slot_renew(*, page_id: int, claim: uuid.UUID | None) -> None:
    InstanceSlot.objects.filter(page_id=page_id, claim=claim).update(expires_at=db_in(settings.COMFY_LEASE_SEC))


def slot_release(*, page_id: int, claim: uuid.UUID | None) -> None:
    # One DELETE statement: nothing refers to a slot, so Django's collector (and the transaction
    # it opens around it) has nothing to do.
    InstanceSlot.objects.filter(page_id=page_id, claim=claim)._raw_delete(InstanceSlot.objects.db)


def instance_busy_elsewhere(*, url: str, page_id: int) -> bool:
    """Whether another page holds a live slot on this instance (so a /free would thrash it)."""
    return InstanceSlot.objects.filter(instance__url=url, expires_at__gt=Now()).exclude(page_id=page_id).exists()


def instance_failed(*, url: str, error: str) -> None:
    """Count a failure to reach an instance; the third in a row marks it down."""
    now = timezone.now()
    ComfyInstance.objects.filter(url=url).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=error[:500]
    )
    marked = ComfyInstance.objects.filter(
        url=url, state=ComfyInstance.State.UP, consecutive_failures__gte=FAILURES_TO_DOWN
    ).update(
        state=ComfyInstance.State.DOWN,
        down_since=now,
        probe_backoff_sec=PROBE_BACKOFF_MIN_SEC,
        next_probe_at=now + timedelta(seconds=PROBE_BACKOFF_MIN_SEC),
    )
    if marked:
        log.warning("instance down", extra={"event": "instance.down", "instance": url, "reason": error[:200]})


def instance_any_up() -> bool:
    return ComfyInstance.objects.filter(enabled=True, state=ComfyInstance.State.UP).exists()


def instance_succeeded(*, url: str) -> None:
    """A call answered: the instance is up, whoever saw it (a worker, its gate or the prober).
    One read when nothing needs to change (every render ends here); the writes stay conditional."""
    row = ComfyInstance.objects.filter(url=url).values_list("state", "consecutive_failures").first()
    if row is None or (row[0] == ComfyInstance.State.UP and row[1] == 0):
        return
    ComfyInstance.objects.filter(url=url, consecutive_failures__gt=0, state=ComfyInstance.State.UP).update(
        consecutive_failures=0
    )
    instance_seen_up(url=url)


def instance_seen_up(*, url: str) -> bool:
    """Mark a down instance up the moment anything sees it answer; True if it was down."""
    marked = ComfyInstance.objects.filter(url=url, enabled=True, state=ComfyInstance.State.DOWN).update(
        state=ComfyInstance.State.UP,
        down_since=None,
        consecutive_failures=0,
        last_error="",
        probe_backoff_sec=0,
        next_probe_at=Now(),
    )
    if marked:
        log.warning("instance up", extra={"event": "instance.up", "instance": url})
    return bool(marked)


def instance_answers(url: str) -> bool:
    """The one definition of "answering", shared by the prober, the worker gate and the client:
    /system_stats within the client's own timeout (COMFY_HTTP_TIMEOUT_SEC). Slow is not down."""
    try:
        ComfyClient(url, timeout=settings.COMFY_HTTP_TIMEOUT_SEC).system_stats()
    except ComfyError:
        return False
    return True


def instance_probe(instance: ComfyInstance) -> bool:
    """Ask one instance for /system_stats and /prompt; record its state and readings."""
    client = ComfyClient(instance.url, timeout=settings.COMFY_HTTP_TIMEOUT_SEC)
    now = timezone.now()
    try:
        stats = client.system_stats()
        depth = client.queue_remaining()
    except ComfyError as exc:
        backoff = min(PROBE_BACKOFF_MAX_SEC, max(PROBE_BACKOFF_MIN_SEC, instance.probe_backoff_sec * 2))
        was_up = instance.state == ComfyInstance.State.UP
        ComfyInstance.objects.filter(pk=instance.pk).update(
            state=ComfyInstance.State.DOWN,
            down_since=instance.down_since or now if not was_up else now,
            last_error=exc.message[:500],
            last_probe_at=now,
            probe_backoff_sec=backoff,
            next_probe_at=now + timedelta(seconds=backoff),
            consecutive_failures=F("consecutive_failures") + 1,
            queue_remaining=None,
        )
        if was_up:
            log.warning(
                "instance down", extra={"event": "instance.down", "instance": instance.url, "reason": exc.message[:200]}
            )
        return False
    gpu = stats.gpu
    readings: dict[str, object] = {
        "vram_total_mb": gpu.vram_total_mb if gpu else None,
        "vram_free_mb": gpu.vram_free_mb if gpu else None,
        "reading_source": "system_stats",
        "gpu_utilization_pct": None,
        "gpu_temperature_c": None,
        "gpu_power_w": None,
    }
    index = instance_gpu_index(instance.url, instance.gpu_index)
    nvml = nvml_read(index) if index is not None else None
    if nvml is not None:
        readings.update(
            vram_total_mb=nvml.vram_total_mb,
            vram_free_mb=nvml.vram_free_mb,
            reading_source="nvml",
            gpu_utilization_pct=nvml.utilization_pct,
            gpu_temperature_c=nvml.temperature_c,
            gpu_power_w=nvml.power_w,
        )
    if instance.state != ComfyInstance.State.UP:
        log.warning("instance up", extra={"event": "instance.up", "instance": instance.url})
    ComfyInstance.objects.filter(pk=instance.pk).update(
        state=ComfyInstance.State.UP,
        down_since=None,
        consecutive_failures=0,
        last_error="",
        last_probe_at=now,
        probe_backoff_sec=0,
        next_probe_at=now + timedelta(seconds=PROBE_INTERVAL_UP_SEC),
        queue_remaining=depth,
        readings_at=now,
        **readings,
    )
    return True


def instances_probe(*, due_only: bool = True) -> dict[str, bool]:
    """Probe every enabled instance that is due (in parallel, so one slow server delays none)."""
    instances_sync()
    now = timezone.now()
    instances = ComfyInstance.objects.filter(enabled=True)
    if due_only:
        instances = instances.filter(next_probe_at__isnull=True) | instances.filter(next_probe_at__lte=now)
    todo = list(instances)
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        results = list(pool.map(_probe_in_thread, todo))
    return {instance.url: ok for instance, ok in zip(todo, results, strict=True)}


def _probe_in_thread(instance: ComfyInstance) -> bool:
    from django.db import connection

    try:
        return instance_probe(instance)
    finally:
        connection.close()  # each thread has its own connection; do not leak it
