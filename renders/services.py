"""The page state machine: every state change of a page, and the retry policy.

The PostgreSQL row is the truth about a page; a Celery message is only a wake-up call naming the
attempt it was sent for. Every change is a conditional update (or a row lock) that checks the
state it expects, and every change a worker makes after its claim also checks the claim's fencing
token (renders/lease.py), so duplicated, late or lost messages, and workers that are slow but
alive, can never render a page twice in effect or overwrite a newer image.

    enqueue ──► QUEUED ──claim──► RENDERING ──finish──► DONE
                  ▲                   │
                  └──── retry ◄───────┤ (backoff in next_attempt_at)
                                      └──give up──► FAILED (needs_regeneration)

Times that decide (leases, due times, backoff) are the database's clock. The work of one attempt
(slots, VRAM, submit, wait) is in renders/render.py.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Now
from django.utils import timezone

from books.models import Book, BookPage, PageVersion
from renders import events
from renders.comfy import ComfyError, ErrorKind, WaitResult
from renders.lease import Claim, ClaimLost, Superseded, db_in, db_now
from renders.models import ComfyInstance, RenderAttempt
from renders.routing import slot_release, slot_renew
from renders.telemetry import telemetry_finalize
from workflows.services import version_get_cached

__all__ = ["Claim", "ClaimLost", "Superseded"]

log = logging.getLogger("bookrender.render")
Status = BookPage.Status
ACTIVE = (Status.QUEUED, Status.RENDERING)
# Kinds that are the page's own fault (its graph or input): retried once, then flagged.
_RETRY_ONCE = {ErrorKind.VALIDATION}
# Kinds that need a person at once: retrying cannot help.
_GIVE_UP_AT_ONCE = {ErrorKind.LOW_VRAM}
# A message may arrive this early (clock skew between hosts) and still claim its page; one that
# comes earlier is published again for when the page is due.
EARLY_TOLERANCE_SEC = 1.0
# The sweeper republishes a page overdue by more than this...
OVERDUE_AFTER_SEC = 10.0
# ...whose latest message is older than this, or than half the time it has been overdue, so a
# long queue gets few duplicates while a lost message is always replaced.
REPUBLISH_AFTER_SEC = 30.0
# A page whose worker died this many times in one attempt fails that attempt (it may be what kills
# them); the retry policy then bounds it like any other failure.
MAX_RESUMES = 3


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
    is superseded, its worker notices at its next step and cancels its prompt, and its image,
    should it finish first, is never stored. Results come in the order of ``page_ids``."""
    now = timezone.now()  # for the record of who asked when; due times are the database's Now()
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
            page.claim = None
            page.needs_regeneration = False
            request = {"by": by, "reason": reason, "at": now.isoformat(), "attempt": page.attempt}
            # Retries are counted from here: a regenerate gets a fresh COMFY_MAX_RETRIES.
            meta = _without(page.job_metadata, "avoid_instance", "deferred", "vram_wait")
            page.job_metadata = {**meta, "run": {**request, "retry_base": page.retry_count}}
            if reason != "create":
                page.job_metadata.setdefault("requests", []).append(request)
            changed.append(page)
            results[page.pk] = EnqueueResult(page, True)
        # Pages whose new values are the same share one UPDATE: all the pages of a new book do.
        same: dict[tuple[int, str], list[BookPage]] = {}
        for page in changed:
            same.setdefault((page.attempt, json.dumps(page.job_metadata, sort_keys=True)), []).append(page)
        parallel = settings.COMFY_ALLOW_PARALLEL_PAGES
        for group in same.values():
            BookPage.objects.filter(pk__in=[page.pk for page in group]).update(
                attempt=group[0].attempt,
                status=Status.QUEUED,
                next_attempt_at=Now(),
                lease_expires_at=None,
                claim=None,
                published_at=None,  # parallel books: pages_publish_fair publishes them, in turn
                needs_regeneration=False,
                job_metadata=group[0].job_metadata,
                updated_at=Now(),
            )
        if parallel:
            book_ids = sorted({page.book_id for page in changed})
            transaction.on_commit(lambda: _publish_fair_for_books(book_ids), robust=True)
        else:
            _publish_after_commit(changed)
    return [results[page_id] for page_id in page_ids]


def pages_cancel(*, page_ids: Sequence[int], by: str) -> list[int]:
    """Stop the pages that are queued or rendering; returns the ids of those stopped.

    Each page's attempt advances and it becomes Cancelled, so a worker rendering it finds its
    attempt superseded at its next lease renewal and cancels the prompt on ComfyUI, and a queued
    page's message finds nothing to claim. Done and failed pages keep what they have (their chosen
    image stays); a regenerate starts a cancelled page again."""
    now = timezone.now()
    with transaction.atomic():
        pages = list(BookPage.objects.select_for_update().filter(pk__in=page_ids, status__in=ACTIVE).order_by("pk"))
        for page in pages:
            request = {"by": by, "reason": "cancel", "at": now.isoformat(), "attempt": page.attempt + 1}
            meta = _without(page.job_metadata, "avoid_instance", "deferred", "vram_wait")
            meta["requests"] = [*meta.get("requests", []), request]
            BookPage.objects.filter(pk=page.pk).update(
                attempt=page.attempt + 1,
                status=Status.CANCELLED,
                claim=None,
                progress=None,
                lease_expires_at=None,
                next_attempt_at=None,
                published_at=None,
                job_metadata=meta,
                updated_at=Now(),
            )
            _after_page_settles(page)
    return [page.pk for page in pages]


def _publish_after_commit(pages: list[BookPage], *, countdown: float = 0) -> None:
    """Publish each page's render message once the transaction commits (a rollback sends none).
    Sequential books publish only their next page (``book_start_next``)."""
    if not pages:
        return
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        book_ids = sorted({page.book_id for page in pages})

        def start_next() -> None:
            for book_id in book_ids:
                book_start_next(book_id=book_id)

        transaction.on_commit(start_next, robust=True)
        return
    messages = [(page.pk, page.attempt) for page in pages]
    transaction.on_commit(lambda: _publish(messages, countdown=countdown), robust=True)


def _publish(
    messages: list[tuple[int, int]], *, countdown: float = 0, names: dict[tuple[int, int], str] | None = None
) -> None:
    from config.celery import app, render_kwargsreprs
    from renders.tasks import render_page

    # Flower's names for the pages (``names``, or one query for them all, not one per message): a
    # new book's first page reaches a worker sooner, and the publisher leaves the CPU to the workers.
    if names is None:
        names = render_kwargsreprs(messages)
    with app.producer_or_acquire() as producer:  # one broker connection for them all
        for message in messages:
            # Celery takes kwargsrepr as a message option; its type stubs do not list it.
            render_page.apply_async(  # type: ignore[call-arg]
                message, countdown=countdown, producer=producer, kwargsrepr=names.get(message)
            )


def book_start_next(*, book_id: int) -> bool:
    """Sequential books (COMFY_ALLOW_PARALLEL_PAGES=false): publish the book's next page.

    The contract: a book's pages render one at a time, in page order. The next page is the
    lowest-numbered queued one; a page waiting out its backoff holds the pages after it (its
    message is published for when it is due). A page that needs attention holds nothing. A page
    that already has its message is not published again, unless it is overdue with no recent
    publish (a lost message), so the sweeper adds no duplicates."""
    with transaction.atomic():
        Book.objects.select_for_update().filter(pk=book_id).first()  # one decision per book at a time
        pages = BookPage.objects.filter(book_id=book_id)
        if pages.filter(status=Status.RENDERING).exists():
            return False
        head = pages.filter(status=Status.QUEUED).order_by("number").first()
        if head is None:
            return False
        now = db_now()
        if head.published_at is not None and not _needs_republish(head, now):
            return False
        BookPage.objects.filter(pk=head.pk, attempt=head.attempt, status=Status.QUEUED).update(published_at=now)
        due_in = max(0.0, ((head.next_attempt_at or now) - now).total_seconds())
        message = [(head.pk, head.attempt)]
        transaction.on_commit(lambda: _publish(message, countdown=due_in), robust=True)
    return True


# The enabled instances' slots, as this process last counted them, and when (monotonic seconds):
# every settled page asks for the window, and instances change far less often.
_slots_counted: tuple[int | None, float] = (None, -1e9)
SLOTS_RECOUNT_SEC = 5.0


def owner_window() -> int:
    """How many of one owner's pages may be rendering or due in the queue at once
    (BOOKRENDER_OWNER_WINDOW, or twice the enabled instances' slots: enough to keep every slot
    fed while a finished page's successor is published). The slots are counted again at most
    every SLOTS_RECOUNT_SEC."""
    global _slots_counted
    if settings.BOOKRENDER_OWNER_WINDOW:
        return int(settings.BOOKRENDER_OWNER_WINDOW)
    slots, counted_at = _slots_counted
    if time.monotonic() - counted_at >= SLOTS_RECOUNT_SEC:
        slots = ComfyInstance.objects.filter(enabled=True).aggregate(n=Sum("slots"))["n"]
        _slots_counted = (slots, time.monotonic())
    return max(4, 2 * (slots or 2 * len(settings.COMFYUI_URLS)))


# An owner's window is topped up once this part of it is free (a quarter: a 16-page window is
# topped up four pages at a time), not on every page that settles: one top-up transaction per
# few pages, and the pages still in flight keep every slot fed meanwhile.
TOP_UP_PART = 4


def pages_publish_fair(*, owner_ids: Sequence[int]) -> int:
    """Fair scheduling across owners (parallel books): publish each owner's next unpublished
    queued pages, oldest first, until the owner has ``owner_window()`` pages rendering or due in
    the queue. Returns how many were published.

    Celery's queue is one FIFO list: publishing a 10,000-page book at once would put every other
    owner behind it. Instead a new book's pages wait in the database (QUEUED, ``published_at``
    NULL) and each owner holds at most a window of the queue, topped up (once a quarter of it is
    free: ``TOP_UP_PART``) as their pages settle, after a retry is scheduled, and by the sweeper
    (so a lost top-up costs one sweep).
    The row stays the truth: a page is published under its row lock, once (``skip_locked`` lets a
    concurrent top-up take the next pages instead), and the claim checks as before."""
    from config.celery import render_kwargsrepr

    published = 0
    window = owner_window() if owner_ids else 0
    early_sec = EARLY_TOLERANCE_SEC
    early = timedelta(seconds=early_sec)
    for owner_id in sorted(set(owner_ids)):
        mine = BookPage.objects.filter(book__owner_id=owner_id)
        # In flight: rendering, or queued with its message due (published when due, or its
        # retry's or deferral's countdown is over); a page waiting out a backoff is not. Counted
        # outside the transaction: a count takes no lock either way, and most calls stop here.
        due = Q(next_attempt_at__lte=Now()) | Q(next_attempt_at__lte=F("published_at") + early)
        in_flight = mine.filter(Q(status=Status.RENDERING) | Q(due, status=Status.QUEUED, published_at__isnull=False))
        free = window - in_flight.count()
        if free < max(1, window // TOP_UP_PART):
            continue
        with transaction.atomic():
            waiting = (
                mine.filter(status=Status.QUEUED, published_at__isnull=True, next_attempt_at__lte=db_in(early_sec))
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("book")
                .order_by("next_attempt_at", "pk")
                .only("pk", "attempt", "number", "book_id", "book__title")[:free]
            )
            pages = list(waiting)
            if not pages:
                continue
            BookPage.objects.filter(pk__in=[page.pk for page in pages]).update(published_at=Now())
            due_now = [(page.pk, page.attempt) for page in pages]
            names = {(page.pk, page.attempt): render_kwargsrepr(page) for page in pages}
            transaction.on_commit(partial(_publish, due_now, names=names), robust=True)
            published += len(pages)
    return published


def _needs_republish(page: BookPage, now: datetime) -> bool:
    """Overdue for a while, and its latest message older than REPUBLISH_AFTER_SEC or than half the
    time it has been overdue: that message was lost (a Redis restart, a publish after commit)."""
    if page.next_attempt_at is None:
        return page.published_at is None
    overdue = (now - page.next_attempt_at).total_seconds()
    if overdue < OVERDUE_AFTER_SEC:
        return False
    if page.published_at is None:
        return True
    since = (now - page.published_at).total_seconds()
    return since >= max(REPUBLISH_AFTER_SEC, overdue / 2)


# --- claim, renew, finish ------------------------------------------------------------------------


def page_claim(*, page_id: int, attempt: int) -> Claim | None:
    """Claim the page for this attempt under a new fencing token, or None if the message is stale,
    a duplicate, or (in a sequential book) not the book's next page. A message that came early
    is published again for when its page is due."""
    token = uuid.uuid4()
    values: dict[str, Any] = {
        "status": Status.RENDERING,
        "claim": token,
        "lease_expires_at": db_in(settings.COMFY_LEASE_SEC),
        "last_attempted_at": Now(),
        "updated_at": Now(),
    }
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=db_in(EARLY_TOLERANCE_SEC))
    pages = BookPage.objects.filter(due, pk=page_id, attempt=attempt, status=Status.QUEUED)
    if settings.COMFY_ALLOW_PARALLEL_PAGES:
        claimed = pages.update(**values)
    else:
        with transaction.atomic():
            book_id = BookPage.objects.filter(pk=page_id).values_list("book_id", flat=True).first()
            if book_id is None:
                return None
            # The book's row lock makes "nothing of this book renders, and no page before this one
            # waits" and the claim one step (on SQLite the IMMEDIATE transaction does).
            Book.objects.select_for_update().filter(pk=book_id).first()
            ahead = BookPage.objects.filter(book_id=OuterRef("book_id")).filter(
                Q(status=Status.RENDERING) | Q(status=Status.QUEUED, number__lt=OuterRef("number"))
            )
            claimed = pages.filter(~Exists(ahead)).update(**values)
    if claimed != 1:
        _republish_if_early(page_id=page_id, attempt=attempt)
        return None  # another worker got there first, or a regenerate superseded this attempt
    # Everything the render reads about its book and style in one query; the workflow version,
    # which never changes, from this process's cache.
    page = (
        BookPage.objects.select_related("book__style")
        .annotate(version_created_at=F("book__workflow_version__created_at"))
        .get(pk=page_id)
    )
    created_at = page.version_created_at  # type: ignore[attr-defined]  # the annotation above
    page.book.workflow_version = version_get_cached(page.book.workflow_version_id, created_at)
    return Claim(page=page, attempt=attempt, token=token)


def _republish_if_early(*, page_id: int, attempt: int) -> None:
    page = BookPage.objects.filter(pk=page_id, attempt=attempt, status=Status.QUEUED).first()
    if page is None or page.next_attempt_at is None:
        return
    wait = (page.next_attempt_at - db_now()).total_seconds()
    if wait > EARLY_TOLERANCE_SEC:
        _publish([(page_id, attempt)], countdown=wait)


def _held(claim: Claim) -> QuerySet[BookPage]:
    """The page, if this claim still holds it."""
    return BookPage.objects.filter(pk=claim.page_id, attempt=claim.attempt, claim=claim.token, status=Status.RENDERING)


def _lost(claim: Claim) -> Superseded | ClaimLost:
    """Why a claim no longer holds its page: a newer attempt (Superseded), or the same attempt
    under another claim, or already settled by it (ClaimLost)."""
    attempt = BookPage.objects.filter(pk=claim.page_id).values_list("attempt", flat=True).first()
    if attempt != claim.attempt:
        return Superseded(f"page {claim.page_id} attempt {claim.attempt} was replaced by attempt {attempt}")
    return ClaimLost(f"page {claim.page_id} attempt {claim.attempt} is held by another claim now")


def page_progress(claim: Claim, *, value: int, maximum: int, node: str | None) -> None:
    """Record the render's progress (for the status page), while the claim holds the page."""
    _held(claim).update(progress={"value": value, "max": maximum, "node": node})


def claim_renew(claim: Claim) -> None:
    """Renew the claim's lease and slot; raise Superseded or ClaimLost when it is gone."""
    if _held(claim).update(lease_expires_at=db_in(settings.COMFY_LEASE_SEC)) != 1:
        raise _lost(claim)
    slot_renew(page_id=claim.page_id, claim=claim.token)


def page_heartbeat(claim: Claim) -> None:
    """Renew at once, from the worker's own thread (the lease thread renews in between)."""
    claim.check()
    claim_renew(claim)


def page_image_prefix(page: BookPage, attempt: int) -> str:
    # The page's uid keeps names unique even across rebuilt databases whose ids start again at 1.
    return f"pages/book-{page.book_id}/page-{page.number:04d}-{page.uid.hex[:12]}-attempt-{attempt}-"


def page_image_name(page: BookPage, attempt: int, token: uuid.UUID | None, extension: str = "png") -> str:
    """Unique per claim: a worker only ever deletes a file it wrote itself."""
    unique = token.hex[:12] if token else uuid.uuid4().hex[:12]
    return f"{page_image_prefix(page, attempt)}{unique}.{extension}"


def page_finish(
    *,
    claim: Claim,
    record: RenderAttempt,
    image: bytes,
    result: WaitResult,
    telemetry: dict[str, Any],
    extension: str = "png",
) -> bool:
    """Store the image as a new version and mark the page Done, only while the claim holds it.
    The new version becomes the chosen image; earlier versions are kept (see versions_prune).
    The page's slot is released in the same transaction. The file is stored first: if the
    storage fails, this raises and the page is not Done."""
    page = claim.page
    stored = default_storage.save(page_image_name(page, claim.attempt, claim.token, extension), ContentFile(image))
    with transaction.atomic():
        finished = _held(claim).update(
            status=Status.DONE,
            progress=None,
            image=stored,
            image_attempt=claim.attempt,
            rendered_at=Now(),
            lease_expires_at=None,
            claim=None,
            next_attempt_at=None,
            needs_regeneration=False,
            job_metadata=_without(page.job_metadata, "avoid_instance", "deferred", "vram_wait"),
            updated_at=Now(),
        )
        if not finished:
            lost = _lost(claim)
            if isinstance(lost, Superseded):
                _close_attempt(record, RenderAttempt.Outcome.SUPERSEDED, telemetry=telemetry)
            default_storage.delete(stored)  # ours alone (named by the claim), and referenced by nothing
            return False
        slot_release(page_id=page.pk, claim=claim.token)  # with the page: no Done page holds a slot
        PageVersion.objects.create(page=page, attempt=claim.attempt, image=stored, seed=record.seed)
        _close_attempt(
            record,
            RenderAttempt.Outcome.SUCCESS,
            comfy_finished_at=from_ms(result.entry.finished_at_ms),
            started_at=from_ms(result.entry.started_at_ms),
            telemetry={**telemetry, "DetectionToDoneMs": round((time.time() - result.detected_at) * 1000, 1)},
        )
        page.status, page.image, page.image_attempt = Status.DONE, stored, claim.attempt  # type: ignore[assignment]
        if claim.attempt > settings.BOOKRENDER_PAGE_VERSIONS_KEPT:  # else there cannot be more versions
            page_id = page.pk
            transaction.on_commit(lambda: versions_prune(page_id=page_id), robust=True)
        transaction.on_commit(
            lambda: events.emit("book.page.done", page=page, attempt=claim.attempt, instance=record.instance_url)
        )
        _after_page_settles(page)
    return True


def _close_attempt(record: RenderAttempt | None, outcome: str, *, telemetry: Any = None, **fields: Any) -> None:
    """Close an attempt's record; outcomes only ever change from running."""
    if record is None:
        return
    RenderAttempt.objects.filter(pk=record.pk, outcome=RenderAttempt.Outcome.RUNNING).update(
        outcome=outcome,
        finished_at=Now(),
        telemetry=telemetry_finalize(telemetry if telemetry is not None else record.telemetry),
        **fields,
    )


def versions_prune(*, page_id: int) -> int:
    """Keep the newest BOOKRENDER_PAGE_VERSIONS_KEPT versions of a page, and always the chosen one;
    delete the rest and their files. Returns how many were deleted."""
    keep = settings.BOOKRENDER_PAGE_VERSIONS_KEPT
    chosen = BookPage.objects.filter(pk=page_id).values_list("image", flat=True).first() or ""
    versions = list(PageVersion.objects.filter(page_id=page_id).order_by("-attempt"))
    doomed = [v for v in versions[keep:] if v.image.name != chosen]
    for version in doomed:
        name = str(version.image.name)
        version.delete()
        default_storage.delete(name)
    return len(doomed)


def page_version_choose(*, page: BookPage, version: PageVersion) -> None:
    """Show another version of a Done page (one click on the status page)."""
    if version.page_id != page.pk:
        raise PageVersion.DoesNotExist("that version belongs to another page")
    BookPage.objects.filter(pk=page.pk).update(image=version.image.name, image_attempt=version.attempt)


def page_fail(
    *,
    claim: Claim,
    error: ComfyError,
    record: RenderAttempt | None,
    telemetry: dict[str, Any] | None = None,
) -> str:
    """Record a failed attempt, then retry with backoff or flag the page. Returns the decision:
    retry, failed, or superseded / lost when the claim no longer holds the page."""
    now = db_now()
    attempt = claim.attempt
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
        record = RenderAttempt.objects.filter(page_id=claim.page_id, number=attempt).first()
    with transaction.atomic():
        page = _held(claim).select_for_update().first()
        if page is None:
            lost = _lost(claim)
            if isinstance(lost, Superseded):
                _close_attempt(record, RenderAttempt.Outcome.SUPERSEDED, telemetry=telemetry, error=entry)
                return "superseded"
            return "lost"
        run = page.job_metadata.get("run", {})
        retries_in_run = page.retry_count + 1 - int(run.get("retry_base", 0))
        same_kind = 1 + sum(
            1 for e in page.image_error if e["kind"] == entry["kind"] and e["attempt"] >= run.get("attempt", 0)
        )
        give_up = (
            error.kind in _GIVE_UP_AT_ONCE
            or retries_in_run > settings.COMFY_MAX_RETRIES
            or ((error.kind in _RETRY_ONCE or not error.retryable) and same_kind >= 2)
        )
        meta = _without(page.job_metadata, "avoid_instance", "deferred", "vram_wait")
        changes: dict[str, Any] = {
            "image_error": [*page.image_error, entry],
            "retry_count": page.retry_count + 1,
            "lease_expires_at": None,
            "claim": None,
            "progress": None,
            "updated_at": now,
        }
        delay = 0.0
        if give_up:
            changes.update(status=Status.FAILED, needs_regeneration=True, next_attempt_at=None, job_metadata=meta)
            decision, event = "failed", "book.page.failed"
        else:
            delay = retry_delay(retries_in_run)
            if error.kind is ErrorKind.UNAVAILABLE and entry["instance"]:
                meta["avoid_instance"] = entry["instance"]
            changes.update(
                attempt=attempt + 1,
                status=Status.QUEUED,
                next_attempt_at=now + timedelta(seconds=delay),
                published_at=now if settings.COMFY_ALLOW_PARALLEL_PAGES else None,
                job_metadata=meta,
            )
            decision, event = "retry", "book.page.retry"
        BookPage.objects.filter(pk=page.pk).update(**changes)
        for name, value in changes.items():
            setattr(page, name, value)
        _close_attempt(record, RenderAttempt.Outcome.FAILED, telemetry=telemetry, error=entry)
        if decision == "retry":
            _publish_after_commit([page], countdown=delay)
            if settings.COMFY_ALLOW_PARALLEL_PAGES:
                _after_page_settles(page)  # its backoff frees its place in the owner's window
        else:
            _after_page_settles(page)
        instance = str(entry["instance"])
        transaction.on_commit(lambda: events.emit(event, page=page, attempt=attempt, instance=instance, error=entry))
    return decision


def attempt_failure_text(*, page_id: int, attempt: int, outcome: str) -> str:
    """One line for Flower about a failed attempt: "page 7 of book 12 “The Fox”, attempt 2 failed
    (oom: ComfyUI ran out of GPU memory…); it will be retried" (or "it needs attention")."""
    page = BookPage.objects.select_related("book").filter(pk=page_id).first()
    if page is None:
        return f"page id {page_id}, attempt {attempt} failed; the page was deleted since"
    error = next((e for e in reversed(page.image_error) if e.get("attempt") == attempt), None)
    what = f"{error.get('kind')}: {str(error.get('message'))[:300]}" if error else "no error recorded"
    then = "it will be retried" if outcome == "retry" else "it needs attention"
    return (
        f"page {page.number} of book {page.book_id} “{page.book.title[:60]}”, attempt {attempt} failed ({what}); {then}"
    )


def page_hand_back(*, claim: Claim) -> bool:
    """Put a page whose worker lost its database connection back in the queue, same attempt: the
    next worker re-attaches to its prompt on ComfyUI, as after a lapsed lease."""
    with transaction.atomic():
        handed = _held(claim).update(
            status=Status.QUEUED,
            lease_expires_at=None,
            claim=None,
            progress=None,
            next_attempt_at=Now(),
            published_at=Now(),
        )
        if handed:
            _publish_after_commit([claim.page])
    return bool(handed)


def page_defer(*, claim: Claim, seconds: float, note: str, extra: dict[str, Any] | None = None) -> bool:
    """Put a claimed page back in the queue without consuming a retry (no free slot, too little
    free VRAM). The attempt number stays: nothing was submitted."""
    with transaction.atomic():
        page = _held(claim).select_for_update().first()
        if page is None:
            return False
        meta = {**page.job_metadata, "deferred": {"note": note, "at": db_now().isoformat()}, **(extra or {})}
        BookPage.objects.filter(pk=page.pk).update(
            status=Status.QUEUED,
            lease_expires_at=None,
            claim=None,
            progress=None,
            next_attempt_at=db_in(seconds),
            published_at=Now() if settings.COMFY_ALLOW_PARALLEL_PAGES else None,
            job_metadata=meta,
        )
        _publish_after_commit([page], countdown=seconds)
    log.info(
        "deferred",
        extra={
            "event": "book.page.deferred",
            "book": claim.page.book_id,
            "page": claim.page.number,
            "attempt": claim.attempt,
            "note": note,
        },
    )
    return True


def page_attempt_record(*, claim: Claim, record: RenderAttempt, meta: dict[str, Any]) -> None:
    """Write the attempt's record and its prompt id into the page in one transaction, under the
    claim. The claim's copy of job_metadata is current: every other change to it also changes
    the claim or the attempt, and then this update finds no page and nothing is written."""
    job_metadata = _without(claim.page.job_metadata, "deferred")
    job_metadata.update(meta)
    job_metadata["prompt_ids"] = {
        **claim.page.job_metadata.get("prompt_ids", {}),
        str(record.number): str(record.prompt_id),
    }
    with transaction.atomic():
        if _held(claim).update(job_metadata=job_metadata) != 1:
            raise _lost(claim)
        record.save()
    claim.page.job_metadata = job_metadata


def _after_page_settles(page: BookPage) -> None:
    """A page left the window of pages in flight (done, failed, cancelled, or waiting to retry):
    the next page of its book (sequential) or of its owner (parallel, fair) goes out."""
    book_id = page.book_id
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        transaction.on_commit(lambda: book_start_next(book_id=book_id), robust=True)
        return
    if BookPage.book.is_cached(page):  # a worker's claimed page has its book: no query for the owner
        owner_id = page.book.owner_id
        transaction.on_commit(lambda: pages_publish_fair(owner_ids=[owner_id]), robust=True)
        return
    transaction.on_commit(lambda: _publish_fair_for_books([book_id]), robust=True)


def _publish_fair_for_books(book_ids: Sequence[int]) -> None:
    owners = Book.objects.filter(pk__in=book_ids).values_list("owner_id", flat=True).distinct()
    pages_publish_fair(owner_ids=list(owners))


def retry_delay(retry_number: int) -> float:
    """Backoff before retry ``retry_number`` (1-based): COMFY_RETRY_BACKOFF_SEC, the last value
    repeating, with ±10% jitter so pages that failed together do not retry together."""
    schedule: list[float] = settings.COMFY_RETRY_BACKOFF_SEC
    base = schedule[min(retry_number, len(schedule)) - 1]
    return base * random.uniform(0.9, 1.1)


def prompt_id_for(page: BookPage, attempt: int) -> str:
    return str(uuid.uuid5(page.uid, f"attempt-{attempt}"))


def from_ms(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def _without(meta: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in keys}


# --- the sweeper -------------------------------------------------------------------------------


@dataclass
class SweepResult:
    resumed: int = 0
    republished: int = 0


# At most this many pages republished per sweep (the oldest first).
REPUBLISH_BATCH = 1000


def pages_sweep() -> SweepResult:
    """Run by Celery beat every few seconds (BOOKRENDER_SWEEP_INTERVAL_SEC).

    1. Rendering pages whose lease lapsed (their worker died): back to QUEUED, same attempt, so
       the next worker re-attaches to the prompt on ComfyUI. Not the Redis visibility timeout,
       which would take an hour.
    2. Queued pages overdue with no recent message (a publish lost after commit, a Redis
       restart): publish again, whatever else the queue holds. Duplicates are harmless: claims
       are conditional. Sequential books: ``book_start_next`` for each book with queued pages.
    """
    result = SweepResult()
    lapsed = BookPage.objects.filter(status=Status.RENDERING, lease_expires_at__lt=Now()).values_list(
        "pk", "attempt", "claim"
    )
    for page_id, attempt, token in list(lapsed):
        if page_resume(page_id=page_id, attempt=attempt, token=token):
            result.resumed += 1
    now = db_now()
    if not settings.COMFY_ALLOW_PARALLEL_PAGES:
        books = BookPage.objects.filter(status=Status.QUEUED).values_list("book_id", flat=True).distinct()
        for book_id in list(books):
            result.republished += int(book_start_next(book_id=book_id))
        return result
    # Pages never published wait for their owner's turn (pages_publish_fair), not for this.
    overdue = BookPage.objects.filter(
        status=Status.QUEUED,
        next_attempt_at__lt=now - timedelta(seconds=OVERDUE_AFTER_SEC),
        published_at__lt=now - timedelta(seconds=REPUBLISH_AFTER_SEC),
    )
    candidates = list(overdue.order_by("next_attempt_at")[: REPUBLISH_BATCH * 2])
    due = [page for page in candidates if _needs_republish(page, now)][:REPUBLISH_BATCH]
    if due:
        BookPage.objects.filter(pk__in=[page.pk for page in due]).update(published_at=now)
        _publish([(page.pk, page.attempt) for page in due])
        result.republished = len(due)
    waiting = BookPage.objects.filter(status=Status.QUEUED, published_at__isnull=True)
    owners = list(waiting.values_list("book__owner_id", flat=True).distinct())
    result.republished += pages_publish_fair(owner_ids=owners)
    return result


def page_resume(*, page_id: int, attempt: int, token: uuid.UUID | None) -> bool:
    """Hand a page whose lease lapsed to another worker, which re-attaches to its prompt. The
    claim's token is cleared, so the worker that held it, should it be alive, changes nothing."""
    with transaction.atomic():
        page = (
            BookPage.objects.select_for_update()
            .filter(pk=page_id, attempt=attempt, claim=token, status=Status.RENDERING, lease_expires_at__lt=Now())
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
            page_fail(claim=Claim(page=page, attempt=attempt, token=token), error=error, record=None)
            return True
        job_metadata = {**page.job_metadata, "resumes": {**page.job_metadata.get("resumes", {}), str(attempt): resumes}}
        BookPage.objects.filter(pk=page.pk).update(
            status=Status.QUEUED,
            lease_expires_at=None,
            claim=None,
            progress=None,
            next_attempt_at=Now(),
            published_at=Now() if settings.COMFY_ALLOW_PARALLEL_PAGES else None,
            job_metadata=job_metadata,
        )
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
        _publish_after_commit([page])
    return True


def broker_queue_length(queue: str = "celery") -> int:
    """Messages waiting in Redis for a worker (the Celery default queue is a Redis list)."""
    from config.celery import app

    with app.connection_for_write() as connection:
        client: Any = connection.default_channel.client  # type: ignore[attr-defined]  # kombu's Redis channel
        return int(client.llen(queue))
