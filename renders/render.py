"""The work of one attempt of one page: claim, slot, VRAM check, submit, wait, fetch, finish.

Every state change goes through renders/services.py under the attempt's claim. While the task
runs, the lease thread (renders/lease.py) renews the claim's lease, whatever call blocks; the
work checks the claim between steps (``claim.check()``) and stops as soon as it is gone:

- Superseded (a newer attempt): cancel this attempt's prompt and close its record;
- ClaimLost (the sweeper handed the page to another worker, same attempt): touch nothing, the
  new holder re-attaches to the prompt.
"""

from __future__ import annotations

import io
import logging
import time
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.db.models.functions import Now
from django.utils import timezone
from PIL import Image

from books.storage import STORAGE_ERRORS, StorageUnavailable
from renders.assets import graph_needs_input, graph_with_input, input_upload
from renders.comfy import MB, ComfyClient, ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.gpu import instance_gpu_index, nvml_read
from renders.lease import KEEPER, Claim, ClaimLost, Superseded, db_now
from renders.models import ComfyInstance, RenderAttempt
from renders.routing import (
    instance_any_up,
    instance_busy_elsewhere,
    instance_failed,
    instance_succeeded,
    slot_acquire,
    slot_release,
    workflow_runnable,
)
from renders.services import (
    claim_renew,
    from_ms,
    page_attempt_record,
    page_claim,
    page_defer,
    page_fail,
    page_finish,
    page_hand_back,
    page_progress,
    prompt_id_for,
)
from renders.telemetry import telemetry_finalize
from workflows.services import page_graph, page_seed

log = logging.getLogger("bookrender.render")
# How long a page whose GPU is short of memory waits before it is tried again.
DEFER_SEC = 5.0
# A claimed page that finds no free slot (every healthy instance busy, some down) waits for one,
# looking every NO_ROOM_POLL_SEC, so it takes a slot the moment one frees and the queue stays in
# Redis, in order; after NO_ROOM_WAIT_SEC it goes back to the queue for NO_ROOM_DEFER_SEC.
NO_ROOM_POLL_SEC = 0.2
NO_ROOM_WAIT_SEC = 5.0
NO_ROOM_DEFER_SEC = 2.0
# A page whose file storage did not answer tries again after this long (no retry used).
STORAGE_RETRY_SEC = 5.0
# How often a wait checks its claim (a flag the lease thread sets; no database call).
CHECK_INTERVAL_SEC = 0.2
# Progress is written to the page at most this often (the status page shows it).
PROGRESS_EVERY_SEC = 1.0


# One client per instance per worker process: its HTTP connections and its last /system_stats
# reading are kept from one page to the next (a prefork process renders one page at a time). Its
# WebSocket is not: each wait opens its own (see ComfyClient.watch).
_CLIENTS: dict[str, ComfyClient] = {}


def comfy_client(instance_url: str) -> ComfyClient:
    client = _CLIENTS.get(instance_url)
    if client is None:
        client = _CLIENTS[instance_url] = ComfyClient(
            instance_url,
            timeout=settings.COMFY_HTTP_TIMEOUT_SEC,
            poll_interval=settings.COMFY_POLL_INTERVAL_SEC,
            max_image_bytes=settings.COMFY_MAX_IMAGE_MB * MB,
        )
    return client


# The instance this process rendered its last page on: among equally loaded instances it gets the
# next one, whose VRAM reading this process already has.
_last_instance = ""


# Each instance's GPU index, from its record (ComfyInstance.gpu_index), for NVML readings.
_GPU_INDEX: dict[str, int | None] = {}
# Whether the instance was up with no failures counted when this process's page took its slot
# there: then a successful render has nothing to reset (routing.instance_succeeded is not asked).
_HEALTHY: dict[str, bool] = {}


def _remember_instance(instance: ComfyInstance) -> str:
    global _last_instance
    _last_instance = instance.url
    _GPU_INDEX[instance.url] = instance.gpu_index
    _HEALTHY[instance.url] = instance.state == ComfyInstance.State.UP and instance.consecutive_failures == 0
    return instance.url


def page_render(*, page_id: int, attempt: int) -> str:
    """Render one attempt of one page. Returns what happened, for logs and tests."""
    claim = page_claim(page_id=page_id, attempt=attempt)
    if claim is None:
        return "skipped"
    outcome = ""
    try:
        with KEEPER.hold(claim, claim_renew):
            outcome = _render_claimed(claim)
            return outcome
    except SoftTimeLimitExceeded:
        return _out_of_time(claim)
    except (OperationalError, InterfaceError):
        # The connection dropped (a PostgreSQL restart, a killed backend): reconnect and hand the
        # page back at once, rather than leave it Rendering until its lease lapses.
        connection.close()
        page_hand_back(claim=claim)
        return "handed back"
    finally:
        if outcome != "done":  # a Done page's slot was released with it (page_finish)
            try:
                slot_release(page_id=page_id, claim=claim.token)
            except DatabaseError:
                pass  # the connection is gone; the slot's lease lapses by itself


def _out_of_time(claim: Claim) -> str:
    """The worker's soft time limit ran out: cancel the prompt (the GPU would go on working for
    nobody), then fail the attempt like a timeout."""
    record = RenderAttempt.objects.filter(page_id=claim.page_id, number=claim.attempt).first()
    if record is not None and record.submitted_at is not None:
        _cancel_quietly(comfy_client(record.instance_url), str(record.prompt_id))
    error = ComfyError(ErrorKind.TIMEOUT, "the worker's soft time limit (CELERY_TASK_SOFT_TIME_LIMIT) ran out")
    return page_fail(claim=claim, error=error, record=record)


def _render_claimed(claim: Claim) -> str:
    page = claim.page
    # An attempt whose prompt id is in job_metadata has its RenderAttempt (both are written in one
    # transaction): a worker lost it during it, so re-attach to its prompt instead of starting anew.
    if str(claim.attempt) in page.job_metadata.get("prompt_ids", {}):
        record = RenderAttempt.objects.filter(page=page, number=claim.attempt).first()
        if record is not None:
            return _resume(claim, record)
    try:
        chosen = _slot_wait(claim)
    except (Superseded, ClaimLost):
        return "superseded"
    if chosen is None:
        # Asked only when no slot was found: an instance that gave one can run the workflow.
        workflow_slug = page.book.workflow_version.workflow.slug
        if not workflow_runnable(workflow=workflow_slug):
            message = f"no ComfyUI can run the workflow {workflow_slug!r}: no fleet has it assigned"
            error = ComfyError(ErrorKind.VALIDATION, message, retryable=False)
            return page_fail(claim=claim, error=error, record=None)
        page_defer(claim=claim, seconds=NO_ROOM_DEFER_SEC, note="no healthy ComfyUI instance has a free slot")
        return "deferred"
    instance = _remember_instance(chosen)
    client = comfy_client(instance)
    telemetry: dict[str, Any] = {"FallbackNotes": []}
    try:
        if not _vram_ok(client, claim, telemetry):
            return _defer_for_vram(claim, instance)
    except ComfyError as exc:
        if exc.kind is ErrorKind.UNAVAILABLE:
            instance_failed(url=instance, error=exc.message)
        return page_fail(claim=claim, error=exc, record=None, telemetry=telemetry)
    seed = page_seed(page)
    # The prompt id and instance are recorded before submitting: a worker lost from here on
    # leaves enough behind for the next one to find the prompt on ComfyUI instead of resubmitting.
    record = RenderAttempt(
        page=page,
        number=claim.attempt,
        prompt_id=prompt_id_for(page, claim.attempt),
        client_id=client.client_id,
        instance_url=instance,
        workflow=str(page.book.workflow_version),
        seed=seed,
        telemetry=telemetry,
    )
    try:
        page_attempt_record(
            claim=claim,
            record=record,
            meta={"prompt_id": str(record.prompt_id), "instance": instance, "seed": seed},
        )
    except (Superseded, ClaimLost):
        return "superseded"
    return _submit_and_wait(claim, record, client, telemetry)


def _slot_wait(claim: Claim) -> ComfyInstance | None:
    """A slot for this claim, waiting up to NO_ROOM_WAIT_SEC for one to free; None if none did.
    Raises Superseded or ClaimLost if the page moved on meanwhile."""
    started = time.monotonic()
    avoid = claim.page.job_metadata.get("avoid_instance", "")
    while True:
        claim.check()
        chosen = slot_acquire(
            page=claim.page, attempt=claim.attempt, claim=claim.token, avoid=avoid, prefer=_last_instance
        )
        if chosen is not None or time.monotonic() - started >= NO_ROOM_WAIT_SEC or not instance_any_up():
            return chosen  # with every instance down, waiting for a slot is pointless
        if not workflow_runnable(workflow=claim.page.book.workflow_version.workflow.slug):
            return None  # no instance will ever have a slot for it
        time.sleep(NO_ROOM_POLL_SEC)


def _submit(claim: Claim, record: RenderAttempt, client: ComfyClient, telemetry: dict[str, Any]) -> None:
    """Send the attempt's graph (its seed, a prefix unique to it) under its prompt id.

    No orphan prompts: when the POST got no answer, ComfyUI may have queued it all the same, so
    look for the prompt id (queue, history) for up to one more HTTP timeout and attach to it; only
    if it never appears is the graph sent again (under the same prompt id)."""
    page = claim.page
    prompt_id = str(record.prompt_id)
    graph = page_graph(
        page,
        seed=record.seed,
        filename_prefix=f"bookrender/book-{page.book_id}/page-{page.number:04d}-a{record.number}-{prompt_id[:8]}",
    ).graph
    extra = {"bookrender": {"page": page.pk, "attempt": record.number}}
    claim.check()
    if graph_needs_input(graph):
        graph = graph_with_input(graph, input_upload(page=page, client=client))
    claim.check()
    try:
        client.submit(graph, prompt_id=prompt_id, extra_data=extra)
    except ComfyError as exc:
        if exc.details.get("submitted"):
            _mark_submitted(record)  # a 200 with node_errors: it was queued, then taken off
            raise
        if not exc.details.get("no_answer"):
            raise
        if not _arrived(claim, client, prompt_id):
            _note(telemetry, "POST /prompt got no answer and the prompt never appeared; sent again")
            client.submit(graph, prompt_id=prompt_id, extra_data=extra)
        else:
            _note(telemetry, "POST /prompt got no answer; found the prompt on ComfyUI and attached to it")
    _mark_submitted(record)


def _arrived(claim: Claim, client: ComfyClient, prompt_id: str) -> bool:
    deadline = time.monotonic() + client.timeout
    while True:
        claim.check()
        try:
            if client.locate(prompt_id).state != "absent":
                return True
        except ComfyError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(0.5, client.timeout / 4))


def _mark_submitted(record: RenderAttempt) -> None:
    RenderAttempt.objects.filter(pk=record.pk, submitted_at__isnull=True).update(submitted_at=Now())
    record.submitted_at = record.submitted_at or timezone.now()


def _stop(
    claim: Claim, exc: Superseded | ClaimLost, client: ComfyClient, record: RenderAttempt, telemetry: dict[str, Any]
) -> str:
    """The claim is gone. Superseded: stop the prompt and close the record. ClaimLost: the same
    attempt goes on under another claim, which owns the prompt and the record now."""
    if isinstance(exc, ClaimLost):
        log.warning(
            "claim lost",
            extra={"event": "book.page.claim_lost", "book": claim.page.book_id, "page": claim.page.number},
        )
        return "lost"
    _cancel_quietly(client, str(record.prompt_id))
    RenderAttempt.objects.filter(pk=record.pk, outcome=RenderAttempt.Outcome.RUNNING).update(
        outcome=RenderAttempt.Outcome.SUPERSEDED,
        finished_at=db_now(),
        telemetry=telemetry_finalize(telemetry),
    )
    return "superseded"


def _submit_and_wait(claim: Claim, record: RenderAttempt, client: ComfyClient, telemetry: dict[str, Any]) -> str:
    try:
        with client.watch() as watcher:
            _submit(claim, record, client, telemetry)
            return _wait_and_finish(claim, record, client, watcher, telemetry)
    except (Superseded, ClaimLost) as exc:
        return _stop(claim, exc, client, record, telemetry)
    except ComfyError as exc:
        return _fail_attempt(claim, record, client, exc, telemetry)
    except StorageUnavailable as exc:
        return _wait_for_storage(claim, exc)


def _wait_for_storage(claim: Claim, exc: StorageUnavailable) -> str:
    """The file storage did not answer (reading the input, or storing the output): the page waits
    and tries again without using a retry. Its prompt id stays with it, so the next try re-attaches
    to the prompt (a finished one is only fetched again, not rendered again)."""
    log.warning(
        "storage unavailable",
        extra={"event": "book.page.storage_unavailable", "book": claim.page.book_id, "page": claim.page.number},
    )
    page_defer(claim=claim, seconds=STORAGE_RETRY_SEC, note=f"waiting for the file storage: {exc}")
    return "deferred"


def _wait_and_finish(
    claim: Claim, record: RenderAttempt, client: ComfyClient, watcher: Any, telemetry: dict[str, Any]
) -> str:
    started = record.created_at or timezone.now()
    remaining = settings.COMFY_RENDER_TIMEOUT_SEC - (timezone.now() - started).total_seconds()
    reported: list[Any] = [None, 0.0]  # the progress last written, and when

    def tick() -> None:
        claim.check()
        progress = watcher.progress
        if progress is not None and progress != reported[0] and time.monotonic() - reported[1] >= PROGRESS_EVERY_SEC:
            page_progress(claim, value=progress[0], maximum=progress[1], node=progress[2])
            reported[:] = [progress, time.monotonic()]

    result: WaitResult = watcher.wait(
        str(record.prompt_id),
        timeout=max(1.0, remaining),
        on_tick=tick,
        tick_interval=CHECK_INTERVAL_SEC,
        limit=f"COMFY_RENDER_TIMEOUT_SEC ({settings.COMFY_RENDER_TIMEOUT_SEC:g} s)",
    )
    return _finish_entry(claim, record, client, result, telemetry)


def _finish_entry(
    claim: Claim, record: RenderAttempt, client: ComfyClient, result: WaitResult, telemetry: dict[str, Any]
) -> str:
    entry: HistoryEntry = result.entry
    telemetry.update(
        HistoryAttempts=result.history_attempts,
        HistoryExitReason=result.exit_reason,
        ExecutionSuccessAt=_iso_ms(entry.finished_at_ms) if entry.status == "success" else None,
        WsReconnects=result.ws_reconnects,
    )
    if entry.error is not None:
        raise entry.error
    workflow = claim.page.book.workflow_version
    images = entry.images_of(workflow.output_node)
    if not images:
        raise ComfyError(
            ErrorKind.NO_OUTPUT,
            f"ComfyUI finished but output node {workflow.output_node} produced no file",
            instance=client.base_url,
            node_id=workflow.output_node,
        )
    claim.check()
    data = client.view(images[0])
    telemetry["DoneMarkerDetected"] = _is_output(data, workflow.output_mime)
    if not telemetry["DoneMarkerDetected"]:
        raise ComfyError(
            ErrorKind.PROTOCOL,
            f"/view returned {len(data)} bytes that are not {workflow.output_mime}",
            instance=client.base_url,
        )
    _vram_after(client, telemetry)
    if not _HEALTHY.get(client.base_url):
        instance_succeeded(url=client.base_url)
    try:
        finished = page_finish(
            claim=claim, record=record, image=data, result=result, telemetry=telemetry, extension=workflow.output_ext
        )
    except STORAGE_ERRORS as exc:
        raise StorageUnavailable(f"cannot store the page's file: {type(exc).__name__}") from exc
    return "done" if finished else "superseded"


def _fail_attempt(
    claim: Claim, record: RenderAttempt, client: ComfyClient, exc: ComfyError, telemetry: dict[str, Any]
) -> str:
    prompt_id = str(record.prompt_id)
    telemetry.setdefault("HistoryAttempts", int(exc.details.get("history_attempts", 0)))
    telemetry.setdefault(
        "HistoryExitReason",
        "maxWait" if exc.kind is ErrorKind.TIMEOUT else exc.details.get("exit_reason", "unknown"),
    )
    telemetry.setdefault("ExecutionSuccessAt", None)
    telemetry.setdefault("DoneMarkerDetected", False)
    if exc.kind is ErrorKind.TIMEOUT:
        # Cancel on ComfyUI (and confirm) before retrying, or the GPU keeps working for nobody.
        cancelled = _cancel_quietly(client, prompt_id)
        exc.message += " (cancelled on ComfyUI)" if cancelled else " (cancel not confirmed)"
    elif exc.kind is ErrorKind.UNAVAILABLE and not exc.details.get("lost"):
        instance_failed(url=client.base_url, error=exc.message)
    elif exc.kind is ErrorKind.OOM and not instance_busy_elsewhere(url=client.base_url, page_id=claim.page_id):
        # ComfyUI already unloaded its models on OOM; free the rest before the retry (§9, §11.8),
        # unless another page renders there (its models would be unloaded under it).
        try:
            client.free()
        except ComfyError:
            telemetry["FallbackNotes"].append("POST /free failed after OOM")
    _vram_after(client, telemetry)
    return page_fail(claim=claim, error=exc, record=record, telemetry=telemetry)


def _resume(claim: Claim, record: RenderAttempt) -> str:
    """The worker that held this attempt was lost: re-attach to its prompt instead of submitting
    again. If the instance that has the prompt is not up, the attempt fails as unavailable and is
    retried elsewhere (with a new prompt id)."""
    client = comfy_client(record.instance_url)
    telemetry: dict[str, Any] = {"FallbackNotes": [], **(record.telemetry or {})}
    telemetry["FallbackNotes"] = [*telemetry.get("FallbackNotes", []), "resumed after a lost worker"]
    prompt_id = str(record.prompt_id)
    instance = slot_acquire(page=claim.page, attempt=claim.attempt, claim=claim.token, resume_on=record.instance_url)
    if instance is not None:
        _remember_instance(instance)
    else:
        error = ComfyError(
            ErrorKind.UNAVAILABLE,
            "the ComfyUI instance that has this page's prompt is down",
            instance=record.instance_url,
            details={"lost": True},
        )
        return _fail_attempt(claim, record, client, error, telemetry)
    try:
        with client.watch() as watcher:
            claim.check()
            location = client.locate(prompt_id)
            if location.state == "finished":
                assert location.entry is not None
                result = WaitResult(location.entry, 1, "postExecution", time.time())
                return _finish_entry(claim, record, client, result, telemetry)
            if location.state in ("pending", "running"):
                return _wait_and_finish(claim, record, client, watcher, telemetry)
            if record.submitted_at is None:
                # The worker was lost before ComfyUI answered the POST: the prompt never arrived
                # (it is not there), so this is still its first submission; send it now under the
                # same prompt id.
                RenderAttempt.objects.filter(pk=record.pk).update(client_id=client.client_id)
                _submit(claim, record, client, telemetry)
                return _wait_and_finish(claim, record, client, watcher, telemetry)
            raise ComfyError(
                ErrorKind.UNAVAILABLE,
                f"prompt {prompt_id} is gone from ComfyUI's queue and history (ComfyUI restarted?)",
                instance=record.instance_url,
                details={"lost": True},
            )
    except (Superseded, ClaimLost) as exc:
        return _stop(claim, exc, client, record, telemetry)
    except ComfyError as exc:
        return _fail_attempt(claim, record, client, exc, telemetry)
    except StorageUnavailable as exc:
        return _wait_for_storage(claim, exc)


def _cancel_quietly(client: ComfyClient, prompt_id: str) -> bool:
    try:
        return client.cancel(prompt_id)
    except ComfyError as exc:
        log.warning("cancel of %s failed: %s", prompt_id, exc)
        return False


# --- GPU checks ----------------------------------------------------------------------------------


# The reading taken after a page, if this recent, serves as the reading before this process's next
# page on the same instance: one /system_stats call per page instead of two.
VRAM_READING_MAX_AGE_SEC = 1.0


def _vram_ok(client: ComfyClient, claim: Claim, telemetry: dict[str, Any]) -> bool:
    """Free VRAM is enough to submit. If not, and nothing else renders on that instance, ask
    ComfyUI to free memory, wait, and look again. A /free while another page renders there would
    unload the models under it, so then the page only waits."""
    free_mb = _vram_free(client, telemetry, key="VramBeforeMB", max_age=VRAM_READING_MAX_AGE_SEC)
    if free_mb is None or free_mb >= settings.COMFY_MIN_VRAM_FREE_MB:
        return True
    if instance_busy_elsewhere(url=client.base_url, page_id=claim.page_id) or client.queue_remaining() > 0:
        return False
    claim.check()
    client.free()
    time.sleep(1.0)  # /free only sets flags; ComfyUI acts on them between prompts
    free_mb = _vram_free(client, telemetry, key="VramBeforeMB")
    return free_mb is None or free_mb >= settings.COMFY_MIN_VRAM_FREE_MB


def _defer_for_vram(claim: Claim, instance: str) -> str:
    """Wait for VRAM without using a retry, but not for ever: past COMFY_VRAM_WAIT_MAX_SEC the
    page needs attention, with the kind low_vram."""
    now = db_now()
    waiting = claim.page.job_metadata.get("vram_wait") or {}
    if waiting.get("attempt") != claim.attempt:
        waiting = {"attempt": claim.attempt, "since": now.isoformat()}
    waited = (now - datetime.fromisoformat(waiting["since"])).total_seconds()
    limit = settings.COMFY_VRAM_WAIT_MAX_SEC
    if waited >= limit:
        error = ComfyError(
            ErrorKind.LOW_VRAM,
            f"the GPU never had {settings.COMFY_MIN_VRAM_FREE_MB} MB of free memory in {limit:g} s of waiting",
            instance=instance,
        )
        return page_fail(claim=claim, error=error, record=None)
    page_defer(
        claim=claim,
        seconds=min(DEFER_SEC, max(0.5, limit - waited)),
        note=f"VRAM below {settings.COMFY_MIN_VRAM_FREE_MB} MB on {instance}",
        extra={"vram_wait": waiting},
    )
    return "deferred"


def _vram_free(client: ComfyClient, telemetry: dict[str, Any], *, key: str, max_age: float = 0.0) -> int | None:
    """Free VRAM in MB from both readings where available; returns the one the decision uses
    (NVML when the GPU is on this host, it sees every process; else /system_stats)."""
    stats_mb: int | None = None
    try:
        gpu = client.system_stats(max_age=max_age).gpu
        stats_mb = gpu.vram_free_mb if gpu else None
    except ComfyError as exc:
        if exc.kind is not ErrorKind.UNAVAILABLE and exc.kind is not ErrorKind.PROTOCOL:
            raise
        if exc.kind is ErrorKind.UNAVAILABLE and key == "VramBeforeMB":
            raise  # the instance is down: that is a failure to submit, not a VRAM question
        _note(telemetry, "/system_stats unavailable")
    index = instance_gpu_index(client.base_url, _GPU_INDEX.get(client.base_url))
    nvml = nvml_read(index) if index is not None else None
    readings = telemetry.setdefault("VramReadings", {})
    readings[key] = {"system_stats": stats_mb, "nvml": nvml.vram_free_mb if nvml else None}
    if nvml is not None:
        telemetry[key], telemetry[key.replace("MB", "Source")] = nvml.vram_free_mb, "nvml"
    elif stats_mb is not None:
        telemetry[key], telemetry[key.replace("MB", "Source")] = stats_mb, "system_stats"
    else:
        telemetry[key] = None
        _note(telemetry, "no VRAM reading: /system_stats unavailable and no NVML on this host")
    value = telemetry[key]
    return value if isinstance(value, int) else None


def _vram_after(client: ComfyClient, telemetry: dict[str, Any]) -> None:
    try:
        _vram_free(client, telemetry, key="VramAfterMB")
    except ComfyError:
        telemetry["VramAfterMB"] = None
        _note(telemetry, "/system_stats unavailable after the render")


def _note(telemetry: dict[str, Any], note: str) -> None:
    notes = telemetry.setdefault("FallbackNotes", [])
    if note not in notes:
        notes.append(note)


def _is_output(data: bytes, mime: str) -> bool:
    """The bytes are what the workflow says its output node writes: a video by its container's
    signature (MP4's ftyp box, WebM's EBML header), an image by Pillow reading it."""
    if mime == "video/mp4":
        return data[4:8] == b"ftyp"
    if mime == "video/webm":
        return data[:4] == b"\x1a\x45\xdf\xa3"
    return _is_image(data)


def _is_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        return True
    except Exception:  # Pillow raises many types for a broken file
        return False


def _iso_ms(ms: int | None) -> str | None:
    value = from_ms(ms)
    return value.isoformat() if value else None
