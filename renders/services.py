"""The render pipeline: every state change of a page, and the work of one attempt.

The PostgreSQL row is the truth about a page; a Celery message is only a wake-up call naming the
attempt it was sent for. Every change is a conditional update (or a row lock) that checks the
state it expects, so duplicated, late or lost messages can never render a page twice in effect
or overwrite a newer image.

    enqueue ──► QUEUED ──claim──► RENDERING ──finish──► DONE
                  ▲                   │
                  └──── retry ◄───────┤ (backoff in next_attempt_at)
                                      └──give up──► FAILED (needs_regeneration)
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DatabaseError, transaction
from django.utils import timezone
from PIL import Image

from books.models import BookPage
from renders import events
from renders.comfy import ComfyClient, ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.gpu import local_gpu_index, nvml_read
from renders.models import ComfyInstance, RenderAttempt
from renders.routing import (
    instance_any_up,
    instance_failed,
    instance_succeeded,
    slot_acquire,
    slot_release,
    slot_renew,
)
from renders.telemetry import telemetry_finalize
from renders.workflows import WorkflowError, workflow_get

log = logging.getLogger("bookrender.render")
Status = BookPage.Status
ACTIVE = (Status.QUEUED, Status.RENDERING)
# Kinds that are the page's own fault (its graph or input): retried once, then flagged.
_RETRY_ONCE = {ErrorKind.VALIDATION}
# How long a page whose GPU is short of memory waits before it is tried again.
DEFER_SEC = 5.0
# A claimed page that finds no free slot (every healthy instance busy, some down) waits for one,
# looking every NO_ROOM_POLL_SEC, so it takes a slot the moment one frees and the queue stays in
# Redis, in order; after NO_ROOM_WAIT_SEC it goes back to the queue for NO_ROOM_DEFER_SEC.
NO_ROOM_POLL_SEC = 0.2
NO_ROOM_WAIT_SEC = 5.0
NO_ROOM_DEFER_SEC = 2.0


class Superseded(Exception):
    """The attempt is no longer current: a regenerate replaced it, or the sweeper resumed it."""


@dataclass(frozen=True)
class EnqueueResult:
    page: BookPage
    queued: bool
    reason: str = ""


# --- enqueue: the one path for every trigger ---------------------------------------------------


def page_enqueue(*, page_id: int, by: str, reason: str, allow_done: bool = True, force: bool = False) -> EnqueueResult:
    """Queue a new attempt of one page (see ``pages_enqueue``)."""
    return pages_enqueue(page_ids=[page_id], by=by, reason=reason, allow_done=allow_done, force=force)[0]


def pages_enqueue(
    *, page_ids: Sequence[int], by: str, reason: str, allow_done: bool = True, force: bool = False
) -> list[EnqueueResult]:
    """Queue a new attempt of each page: the first render, a user's regenerate, an admin's rerun.

    Under row locks each attempt number advances and the page becomes QUEUED; the Celery messages
    are published only after the transaction commits. A page already queued or rendering is
    skipped, never queued twice, unless ``force`` (an admin's rerun): then the running attempt
    is superseded, its worker notices at its next heartbeat and cancels its prompt, and its image,
    should it finish first, is never stored. Results come in the order of ``page_ids``."""
    now = timezone.now()
    results: dict[int, EnqueueResult] = {}
    with transaction.atomic():
        pages = list(BookPage.objects.select_for_update().filter(pk__in=page_ids).order_by("pk"))
        missing = set(page_ids) - {page.pk for page in pages}
        if missing:
            raise BookPage.DoesNotExist(f"no page with id {min(missing)}; nothing was queued")
        changed: list[BookPage] = []
        for page in pages:
            if page.status in ACTIVE and page.attempt > 0 and not force:
                results[page.pk] = EnqueueResult(page, False, f"already {page.get_status_display().lower()}")
                continue
            if page.status == Status.DONE and not allow_done:
                results[page.pk] = EnqueueResult(page, False, "already done")
                continue
            page.attempt += 1
            page.status = Status.QUEUED
            page.next_attempt_at = now
            page.lease_expires_at = None
            page.needs_regeneration = False
            request = {"by": by, "reason": reason, "at": now.isoformat(), "attempt": page.attempt}
            # Retries are counted from here: a regenerate gets a fresh COMFY_MAX_RETRIES.
            page.job_metadata = {**page.job_metadata, "run": {**request, "retry_base": page.retry_count}}
            if reason != "create":
                page.job_metadata.setdefault("requests", []).append(request)
            changed.append(page)
            results[page.pk] = EnqueueResult(page, True)
        # Pages whose new values are the same share one UPDATE: all the pages of a new book do.
        same: dict[tuple[int, str], list[BookPage]] = {}
        for page in changed:
            same.setdefault((page.attempt, json.dumps(page.job_metadata, sort_keys=True)), []).append(page)
        for group in same.values():
            BookPage.objects.filter(pk__in=[page.pk for page in group]).update(
                attempt=group[0].attempt,
                status=Status.QUEUED,
                next_attempt_at=now,
                lease_expires_at=None,
                needs_regeneration=False,
                job_metadata=group[0].job_metadata,
                updated_at=now,
            )
        _publish_after_commit(changed)
    return [results[page_id] for page_id in page_ids]


def _publish_after_commit(pages: list[BookPage], *, countdown: float = 0) -> None:
    """Publish each page's render message once the transaction commits (a rollback sends none)."""
    from config.celery import app
    from renders.tasks import render_page

    if not pages:
        return
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        # One page of a book at a time: the sweeper and each finished page start the next one.
        book_ids = sorted({page.book_id for page in pages})

        def start_next() -> None:
            for book_id in book_ids:
                book_start_next(book_id=book_id)

        transaction.on_commit(start_next, robust=True)
        return
    messages = [(page.pk, page.attempt) for page in pages]

    def publish() -> None:
        with app.producer_or_acquire() as producer:  # one broker connection for them all
            for message in messages:
                render_page.apply_async(message, countdown=countdown, producer=producer)

    transaction.on_commit(publish, robust=True)


def book_start_next(*, book_id: int) -> bool:
    """Sequential books: publish the lowest queued, due page when none of the book is rendering."""
    from renders.tasks import render_page

    pages = BookPage.objects.filter(book_id=book_id)
    if pages.filter(status=Status.RENDERING).exists():
        return False
    due = pages.filter(status=Status.QUEUED, next_attempt_at__lte=timezone.now()).order_by("number").first()
    if due is None:
        return False
    render_page.apply_async((due.pk, due.attempt))
    return True


# --- claim, heartbeat, finish ------------------------------------------------------------------


def page_claim(*, page_id: int, attempt: int) -> BookPage | None:
    """Claim the page for this attempt, or None if the message is stale, early or a duplicate."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.COMFY_LEASE_SEC)
    pages = BookPage.objects.filter(
        pk=page_id,
        attempt=attempt,
        status=Status.QUEUED,
        next_attempt_at__lte=now + timedelta(seconds=1),
    )
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        with transaction.atomic():
            # Lock the book so two workers cannot both start a page of it.
            from books.models import Book

            book_id = BookPage.objects.filter(pk=page_id).values_list("book_id", flat=True).first()
            if book_id is None:
                return None
            Book.objects.select_for_update().filter(pk=book_id).first()
            if BookPage.objects.filter(book_id=book_id, status=Status.RENDERING).exists():
                return None
            claimed = pages.update(
                status=Status.RENDERING,
                lease_expires_at=lease,
                last_attempted_at=now,
                updated_at=now,
            )
    else:
        claimed = pages.update(
            status=Status.RENDERING,
            lease_expires_at=lease,
            last_attempted_at=now,
            updated_at=now,
        )
    if claimed != 1:
        return None  # another worker got there first, or a regenerate superseded this attempt
    return BookPage.objects.select_related("book").get(pk=page_id)


def page_heartbeat(*, page_id: int, attempt: int) -> None:
    """Renew the lease; raise Superseded when the page has moved on without us."""
    lease = timezone.now() + timedelta(seconds=settings.COMFY_LEASE_SEC)
    renewed = BookPage.objects.filter(pk=page_id, attempt=attempt, status=Status.RENDERING).update(
        lease_expires_at=lease
    )
    if renewed != 1:
        raise Superseded(f"page {page_id} attempt {attempt} is no longer current")
    slot_renew(page_id=page_id, attempt=attempt)


def _locked_current(page_id: int, attempt: int) -> BookPage | None:
    """The page, row-locked, if this attempt is still the one rendering it (call inside atomic)."""
    return BookPage.objects.select_for_update().filter(pk=page_id, attempt=attempt, status=Status.RENDERING).first()


def page_image_name(page: BookPage, attempt: int) -> str:
    # The page's uid keeps names unique even across rebuilt databases whose ids start again at 1.
    return f"pages/book-{page.book_id}/page-{page.number:04d}-{page.uid.hex[:12]}-attempt-{attempt}.png"


def page_finish(
    *,
    record: RenderAttempt,
    image: bytes,
    result: WaitResult,
    telemetry: dict[str, Any],
) -> bool:
    """Store the image and mark the page Done, only if the attempt is still current."""
    page = record.page
    name = page_image_name(page, record.number)
    if default_storage.exists(name):
        default_storage.delete(name)  # a resumed attempt finishing again writes the same file
    stored = default_storage.save(name, ContentFile(image))
    now = timezone.now()
    with transaction.atomic():
        finished = BookPage.objects.filter(pk=page.pk, attempt=record.number, status=Status.RENDERING).update(
            status=Status.DONE,
            image=stored,
            image_attempt=record.number,
            rendered_at=now,
            lease_expires_at=None,
            next_attempt_at=None,
            needs_regeneration=False,
            updated_at=now,
        )
        if not finished:
            default_storage.delete(stored)
            RenderAttempt.objects.filter(pk=record.pk).update(
                outcome=RenderAttempt.Outcome.SUPERSEDED,
                finished_at=now,
                telemetry=telemetry_finalize(telemetry),
            )
            return False
        # The image as the claim read it: while this attempt is current, nothing else stores one.
        old_image = page.image.name if page.image else ""
        page.status, page.image, page.image_attempt, page.rendered_at = Status.DONE, stored, record.number, now
        RenderAttempt.objects.filter(pk=record.pk).update(
            outcome=RenderAttempt.Outcome.SUCCESS,
            finished_at=now,
            comfy_finished_at=_from_ms(result.entry.finished_at_ms),
            started_at=_from_ms(result.entry.started_at_ms),
            telemetry={
                **telemetry_finalize(telemetry),
                "DetectionToDoneMs": round((time.time() - result.detected_at) * 1000, 1),
            },
        )
        if old_image and old_image != stored:
            transaction.on_commit(lambda: default_storage.delete(old_image))
        transaction.on_commit(
            lambda: events.emit(
                "book.page.done",
                page=page,
                attempt=record.number,
                instance=record.instance_url,
            )
        )
        _after_page_settles(page)
    return True


def page_fail(
    *,
    page_id: int,
    attempt: int,
    error: ComfyError,
    record: RenderAttempt | None,
    telemetry: dict[str, Any] | None = None,
) -> str:
    """Record a failed attempt, then retry with backoff or flag the page. Returns the decision."""
    now = timezone.now()
    entry = {
        "attempt": attempt,
        "kind": str(error.kind),
        "message": error.message,
        "node_id": error.node_id,
        "node_type": error.node_type,
        "exception_type": error.exception_type,
        "instance": error.instance or (record.instance_url if record else ""),
        "at": now.isoformat(),
    }
    if record is None:
        record = RenderAttempt.objects.filter(page_id=page_id, number=attempt).first()
    with transaction.atomic():
        page = _locked_current(page_id, attempt)
        if page is None:
            if record is not None:
                RenderAttempt.objects.filter(pk=record.pk).update(
                    outcome=RenderAttempt.Outcome.SUPERSEDED,
                    finished_at=now,
                    error=entry,
                    telemetry=telemetry_finalize(telemetry or record.telemetry),
                )
            return "superseded"
        page.image_error = [*page.image_error, entry]
        page.retry_count += 1
        page.lease_expires_at = None
        retries_in_run = page.retry_count - int(page.job_metadata.get("run", {}).get("retry_base", 0))
        same_kind = sum(
            1
            for e in page.image_error
            if e["kind"] == entry["kind"] and e["attempt"] >= page.job_metadata.get("run", {}).get("attempt", 0)
        )
        give_up = retries_in_run > settings.COMFY_MAX_RETRIES or (
            (error.kind in _RETRY_ONCE or not error.retryable) and same_kind >= 2
        )
        if give_up:
            page.status = Status.FAILED
            page.needs_regeneration = True
            page.next_attempt_at = None
            decision, event = "failed", "book.page.failed"
        else:
            delay = retry_delay(retries_in_run)
            page.attempt += 1
            page.status = Status.QUEUED
            page.next_attempt_at = now + timedelta(seconds=delay)
            if error.kind is ErrorKind.UNAVAILABLE and entry["instance"]:
                page.job_metadata = {
                    **page.job_metadata,
                    "avoid_instance": entry["instance"],
                }
            decision, event = "retry", "book.page.retry"
        page.save()
        if record is not None:
            RenderAttempt.objects.filter(pk=record.pk).update(
                outcome=RenderAttempt.Outcome.FAILED,
                finished_at=now,
                error=entry,
                telemetry=telemetry_finalize(telemetry or record.telemetry),
            )
        if decision == "retry":
            _publish_after_commit([page], countdown=delay)
        else:
            _after_page_settles(page)
        instance = str(entry["instance"])
        transaction.on_commit(lambda: events.emit(event, page=page, attempt=attempt, instance=instance, error=entry))
    return decision


def page_hand_back(*, page_id: int, attempt: int) -> bool:
    """Put a page whose worker lost its database connection back in the queue, same attempt: the
    next worker re-attaches to its prompt on ComfyUI, as after a lapsed lease."""
    from renders.tasks import render_page

    with transaction.atomic():
        handed = BookPage.objects.filter(pk=page_id, attempt=attempt, status=Status.RENDERING).update(
            status=Status.QUEUED, lease_expires_at=None, next_attempt_at=timezone.now()
        )
        if handed:
            transaction.on_commit(lambda: render_page.apply_async((page_id, attempt)), robust=True)
    return bool(handed)


def page_defer(*, page: BookPage, seconds: float, note: str) -> None:
    """Put a claimed page back in the queue without consuming a retry (no healthy instance,
    too little free VRAM). The attempt number stays: nothing was submitted."""
    with transaction.atomic():
        current = _locked_current(page.pk, page.attempt)
        if current is None:
            return
        current.status = Status.QUEUED
        current.lease_expires_at = None
        current.next_attempt_at = timezone.now() + timedelta(seconds=seconds)
        current.job_metadata = {
            **current.job_metadata,
            "deferred": {"note": note, "at": timezone.now().isoformat()},
        }
        current.save()
        _publish_after_commit([current], countdown=seconds)
    log.info(
        "deferred",
        extra={
            "event": "book.page.deferred",
            "book": page.book_id,
            "page": page.number,
            "attempt": page.attempt,
            "note": note,
        },
    )


def _after_page_settles(page: BookPage) -> None:
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        book_id = page.book_id
        transaction.on_commit(lambda: book_start_next(book_id=book_id), robust=True)


def retry_delay(retry_number: int) -> float:
    """Backoff before retry ``retry_number`` (1-based): COMFY_RETRY_BACKOFF_SEC, the last value
    repeating, with ±10% jitter so pages that failed together do not retry together."""
    schedule: list[float] = settings.COMFY_RETRY_BACKOFF_SEC
    base = schedule[min(retry_number, len(schedule)) - 1]
    return base * random.uniform(0.9, 1.1)


def prompt_id_for(page: BookPage, attempt: int) -> str:
    return str(uuid.uuid5(page.uid, f"attempt-{attempt}"))


def _from_ms(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


# --- one attempt, start to end -----------------------------------------------------------------


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
        )
    return client


# The instance this process rendered its last page on: among equally loaded instances it gets the
# next one, whose VRAM reading this process already has.
_last_instance = ""


def _remember_instance(url: str) -> str:
    global _last_instance
    _last_instance = url
    return url


def page_render(*, page_id: int, attempt: int) -> str:
    """Render one attempt of one page. Returns what happened, for logs and tests."""
    page = page_claim(page_id=page_id, attempt=attempt)
    if page is None:
        return "skipped"
    try:
        return _render_claimed(page, attempt)
    finally:
        try:
            slot_release(page_id=page_id, attempt=attempt)
        except DatabaseError:
            pass  # the connection is gone; the slot's lease lapses by itself


def _render_claimed(page: BookPage, attempt: int) -> str:
    # An attempt whose prompt id is in job_metadata has its RenderAttempt (both are written in one
    # transaction): a worker died during it, so re-attach to its prompt instead of starting anew.
    if str(attempt) in page.job_metadata.get("prompt_ids", {}):
        record = RenderAttempt.objects.filter(page=page, number=attempt).first()
        if record is not None:
            return _resume(page, record)
    try:
        workflow = workflow_get(page.book.workflow)
    except WorkflowError as exc:
        return page_fail(
            page_id=page.pk,
            attempt=attempt,
            error=ComfyError(ErrorKind.VALIDATION, str(exc), retryable=False),
            record=None,
        )
    try:
        chosen = _slot_wait(page, attempt)
    except Superseded:
        return "superseded"
    if chosen is None:
        page_defer(page=page, seconds=NO_ROOM_DEFER_SEC, note="no healthy ComfyUI instance has a free slot")
        return "deferred"
    instance = _remember_instance(chosen.url)
    client = comfy_client(instance)
    telemetry: dict[str, Any] = {"FallbackNotes": []}
    try:
        if not _vram_ok(client, page, telemetry):
            page_defer(
                page=page,
                seconds=DEFER_SEC,
                note=f"VRAM below {settings.COMFY_MIN_VRAM_FREE_MB} MB on {instance}",
            )
            return "deferred"
    except ComfyError as exc:
        if exc.kind is ErrorKind.UNAVAILABLE:
            instance_failed(url=instance, error=exc.message)
        return page_fail(page_id=page.pk, attempt=attempt, error=exc, record=None)
    seed = int(page.overrides.get("seed") or random.randrange(2**32))
    # The prompt id and instance are recorded before submitting: a worker that dies from here on
    # leaves enough behind for the next one to find the prompt on ComfyUI instead of resubmitting.
    with transaction.atomic():
        record = RenderAttempt.objects.create(
            page=page,
            number=attempt,
            prompt_id=prompt_id_for(page, attempt),
            client_id=client.client_id,
            instance_url=instance,
            workflow=workflow.slug,
            seed=seed,
            telemetry=telemetry,
        )
        BookPage.objects.filter(pk=page.pk, attempt=attempt).update(
            job_metadata=_with_attempt_meta(page.job_metadata, record)
        )
    return _submit_and_wait(page, record, client, telemetry)


def _slot_wait(page: BookPage, attempt: int) -> ComfyInstance | None:
    """A slot for this attempt, waiting up to NO_ROOM_WAIT_SEC for one to free (the page's lease
    renewed meanwhile); None if none did. Raises Superseded if the page moved on meanwhile."""
    started = last_beat = time.monotonic()
    avoid = page.job_metadata.get("avoid_instance", "")
    while True:
        chosen = slot_acquire(page=page, attempt=attempt, avoid=avoid, prefer=_last_instance)
        if chosen is not None or time.monotonic() - started >= NO_ROOM_WAIT_SEC or not instance_any_up():
            return chosen  # with every instance down, waiting for a slot is pointless
        time.sleep(NO_ROOM_POLL_SEC)
        if time.monotonic() - last_beat >= 1.0:
            page_heartbeat(page_id=page.pk, attempt=attempt)
            last_beat = time.monotonic()


def _with_attempt_meta(meta: dict[str, Any], record: RenderAttempt) -> dict[str, Any]:
    return {
        **meta,
        "prompt_id": str(record.prompt_id),
        "instance": record.instance_url,
        "seed": record.seed,
        "prompt_ids": {
            **meta.get("prompt_ids", {}),
            str(record.number): str(record.prompt_id),
        },
    }


def _submit(page: BookPage, record: RenderAttempt, client: ComfyClient) -> None:
    """Send the attempt's graph (its seed, a prefix unique to it) under its prompt id."""
    prompt_id = str(record.prompt_id)
    graph = workflow_get(page.book.workflow).fill(
        prompt=page.prompt,
        negative_prompt=page.negative_prompt,
        seed=record.seed,
        filename_prefix=f"bookrender/book-{page.book_id}/page-{page.number:04d}-a{record.number}-{prompt_id[:8]}",
        width=page.overrides.get("width"),
        height=page.overrides.get("height"),
    )
    client.submit(graph, prompt_id=prompt_id, extra_data={"bookrender": {"page": page.pk, "attempt": record.number}})
    RenderAttempt.objects.filter(pk=record.pk).update(submitted_at=timezone.now())


def _superseded(client: ComfyClient, record: RenderAttempt, telemetry: dict[str, Any]) -> str:
    """A newer attempt took the page while this one ran: stop its prompt and close its record."""
    _cancel_quietly(client, str(record.prompt_id))
    RenderAttempt.objects.filter(pk=record.pk).update(
        outcome=RenderAttempt.Outcome.SUPERSEDED,
        finished_at=timezone.now(),
        telemetry=telemetry_finalize(telemetry),
    )
    return "superseded"


def _submit_and_wait(page: BookPage, record: RenderAttempt, client: ComfyClient, telemetry: dict[str, Any]) -> str:
    try:
        with client.watch() as watcher:
            _submit(page, record, client)
            return _wait_and_finish(page, record, client, watcher, telemetry)
    except Superseded:
        return _superseded(client, record, telemetry)
    except ComfyError as exc:
        return _fail_attempt(page, record, client, exc, telemetry)


def _wait_and_finish(
    page: BookPage,
    record: RenderAttempt,
    client: ComfyClient,
    watcher: Any,
    telemetry: dict[str, Any],
) -> str:
    prompt_id = str(record.prompt_id)
    started = record.created_at or timezone.now()
    remaining = settings.COMFY_RENDER_TIMEOUT_SEC - (timezone.now() - started).total_seconds()
    result: WaitResult = watcher.wait(
        prompt_id,
        timeout=max(1.0, remaining),
        on_tick=lambda: page_heartbeat(page_id=page.pk, attempt=record.number),
        tick_interval=min(1.0, settings.COMFY_LEASE_SEC / 3),
    )
    return _finish_entry(page, record, client, result, telemetry)


def _finish_entry(
    page: BookPage,
    record: RenderAttempt,
    client: ComfyClient,
    result: WaitResult,
    telemetry: dict[str, Any],
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
    workflow = workflow_get(page.book.workflow)
    images = entry.images_of(workflow.output_node)
    if not images:
        raise ComfyError(
            ErrorKind.EXECUTION,
            f"ComfyUI finished but output node {workflow.output_node} produced no image",
            instance=client.base_url,
            node_id=workflow.output_node,
        )
    data = client.view(images[0])
    telemetry["DoneMarkerDetected"] = _is_image(data)
    if not telemetry["DoneMarkerDetected"]:
        raise ComfyError(
            ErrorKind.PROTOCOL,
            f"/view returned {len(data)} bytes that are not an image",
            instance=client.base_url,
        )
    _vram_after(client, record, telemetry)
    instance_succeeded(url=client.base_url)
    if page_finish(record=record, image=data, result=result, telemetry=telemetry):
        return "done"
    return "superseded"


def _fail_attempt(
    page: BookPage,
    record: RenderAttempt,
    client: ComfyClient,
    exc: ComfyError,
    telemetry: dict[str, Any],
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
    elif exc.kind is ErrorKind.OOM:
        # ComfyUI already unloaded its models on OOM; free the rest before the retry (§9, §11.8).
        try:
            client.free()
        except ComfyError:
            telemetry["FallbackNotes"].append("POST /free failed after OOM")
    _vram_after(client, record, telemetry)
    return page_fail(
        page_id=page.pk,
        attempt=record.number,
        error=exc,
        record=record,
        telemetry=telemetry,
    )


def _resume(page: BookPage, record: RenderAttempt) -> str:
    """A worker died during this attempt: re-attach to its prompt instead of submitting again."""
    slot_acquire(page=page, attempt=record.number, resume_on=record.instance_url)
    client = comfy_client(record.instance_url)
    telemetry: dict[str, Any] = {"FallbackNotes": [], **(record.telemetry or {})}
    telemetry["FallbackNotes"] = [
        *telemetry.get("FallbackNotes", []),
        "resumed after a lost worker",
    ]
    prompt_id = str(record.prompt_id)
    try:
        with client.watch() as watcher:
            location = client.locate(prompt_id)
            if location.state == "finished":
                assert location.entry is not None
                result = WaitResult(location.entry, 1, "postExecution", time.time())
                return _finish_entry(page, record, client, result, telemetry)
            if location.state in ("pending", "running"):
                return _wait_and_finish(page, record, client, watcher, telemetry)
            if record.submitted_at is None:
                # The worker died before ComfyUI accepted the prompt: this is still its first
                # submission, so send it now under the same prompt id.
                RenderAttempt.objects.filter(pk=record.pk).update(client_id=client.client_id)
                _submit(page, record, client)
                return _wait_and_finish(page, record, client, watcher, telemetry)
            raise ComfyError(
                ErrorKind.UNAVAILABLE,
                f"prompt {prompt_id} is gone from ComfyUI's queue and history (ComfyUI restarted?)",
                instance=record.instance_url,
                details={"lost": True},
            )
    except Superseded:
        return _superseded(client, record, telemetry)
    except ComfyError as exc:
        return _fail_attempt(page, record, client, exc, telemetry)


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


def _vram_ok(client: ComfyClient, page: BookPage, telemetry: dict[str, Any]) -> bool:
    """Free VRAM is enough to submit; if not, ask ComfyUI to free memory, wait, and look again."""
    free_mb = _vram_free(client, telemetry, key="VramBeforeMB", max_age=VRAM_READING_MAX_AGE_SEC)
    if free_mb is None or free_mb >= settings.COMFY_MIN_VRAM_FREE_MB:
        return True
    client.free()
    time.sleep(1.0)  # /free only sets flags; ComfyUI acts on them between prompts
    free_mb = _vram_free(client, telemetry, key="VramBeforeMB")
    return free_mb is None or free_mb >= settings.COMFY_MIN_VRAM_FREE_MB


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
    index = local_gpu_index(client.base_url)
    nvml = nvml_read(index) if index is not None else None
    readings = telemetry.setdefault("VramReadings", {})
    readings[key] = {
        "system_stats": stats_mb,
        "nvml": nvml.vram_free_mb if nvml else None,
    }
    if nvml is not None:
        telemetry[key], telemetry[key.replace("MB", "Source")] = (
            nvml.vram_free_mb,
            "nvml",
        )
    elif stats_mb is not None:
        telemetry[key], telemetry[key.replace("MB", "Source")] = (
            stats_mb,
            "system_stats",
        )
    else:
        telemetry[key] = None
        _note(
            telemetry,
            "no VRAM reading: /system_stats unavailable and no NVML on this host",
        )
    value = telemetry[key]
    return value if isinstance(value, int) else None


def _vram_after(client: ComfyClient, record: RenderAttempt, telemetry: dict[str, Any]) -> None:
    try:
        _vram_free(client, telemetry, key="VramAfterMB")
    except ComfyError:
        telemetry["VramAfterMB"] = None
        _note(telemetry, "/system_stats unavailable after the render")


def _note(telemetry: dict[str, Any], note: str) -> None:
    notes = telemetry.setdefault("FallbackNotes", [])
    if note not in notes:
        notes.append(note)


def _is_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        return True
    except Exception:  # Pillow raises many types for a broken file
        return False


def _iso_ms(ms: int | None) -> str | None:
    value = _from_ms(ms)
    return value.isoformat() if value else None


# --- the sweeper -------------------------------------------------------------------------------


@dataclass
class SweepResult:
    resumed: int = 0
    republished: int = 0


def pages_sweep(*, stuck_after_sec: float = 10.0) -> SweepResult:
    """Run by Celery beat every few seconds.

    1. Rendering pages whose lease lapsed (their worker died): back to QUEUED, same attempt, so
       the next worker re-attaches to the prompt on ComfyUI. Not the Redis visibility timeout,
       which would take an hour.
    2. Queued pages due for a while with no message waiting for them in Redis (a publish lost
       after commit, a Redis restart): publish again. Duplicates are harmless: claims are
       conditional.
    """
    from renders.tasks import render_page

    result = SweepResult()
    now = timezone.now()
    lapsed = BookPage.objects.filter(status=Status.RENDERING, lease_expires_at__lt=now).values_list("pk", "attempt")
    for page_id, attempt in list(lapsed):
        if page_resume(page_id=page_id, attempt=attempt):
            result.resumed += 1
    stuck = BookPage.objects.filter(
        status=Status.QUEUED,
        next_attempt_at__lt=now - timedelta(seconds=stuck_after_sec),
    )
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        for book_id in set(
            BookPage.objects.filter(status=Status.QUEUED, next_attempt_at__lte=now).values_list("book_id", flat=True)
        ):
            result.republished += int(book_start_next(book_id=book_id))
    elif stuck.exists() and broker_queue_length() == 0:
        for page_id, attempt in stuck.values_list("pk", "attempt")[:1000]:
            render_page.apply_async((page_id, attempt))
            result.republished += 1
    return result


# A page whose worker died this many times in one attempt fails that attempt (it may be what kills
# them); the retry policy then bounds it like any other failure.
MAX_RESUMES = 3


def page_resume(*, page_id: int, attempt: int) -> bool:
    """Hand a page whose lease lapsed to another worker, which re-attaches to its prompt."""
    from renders.tasks import render_page

    now = timezone.now()
    with transaction.atomic():
        page = (
            BookPage.objects.select_for_update()
            .filter(pk=page_id, attempt=attempt, status=Status.RENDERING, lease_expires_at__lt=now)
            .first()
        )
        if page is None:
            return False
        resumes = int(page.job_metadata.get("resumes", {}).get(str(attempt), 0)) + 1
        if resumes > MAX_RESUMES:
            error = ComfyError(
                ErrorKind.UNAVAILABLE,
                f"the worker rendering this page was lost {resumes - 1} times (killed or crashed)",
                instance=str(page.job_metadata.get("instance", "")),
            )
            transaction.on_commit(lambda: page_fail(page_id=page_id, attempt=attempt, error=error, record=None))
            return True
        page.job_metadata = {
            **page.job_metadata,
            "resumes": {**page.job_metadata.get("resumes", {}), str(attempt): resumes},
        }
        page.status = Status.QUEUED
        page.lease_expires_at = None
        page.next_attempt_at = now
        page.save()
        log.warning(
            "resumed",
            extra={
                "event": "book.page.resumed",
                "book": page.book_id,
                "page": page.number,
                "attempt": attempt,
                "resumes": resumes,
            },
        )
        if settings.COMFY_ALLOW_PARALLEL_PAGES:
            transaction.on_commit(lambda: render_page.apply_async((page_id, attempt)), robust=True)
        else:
            _after_page_settles(page)
    return True


def broker_queue_length(queue: str = "celery") -> int:
    """Messages waiting in Redis for a worker (the Celery default queue is a Redis list)."""
    from config.celery import app

    with app.connection_for_write() as connection:
        client: Any = connection.default_channel.client  # type: ignore[attr-defined]  # kombu's Redis channel
        return int(client.llen(queue))
