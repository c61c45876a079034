"""What the status page shows of a book: the counts, and for each page its card: the error in plain
words with advice, an honest reason for every wait, and the settings its image was drawn with.

Everything comes from one read of the book's pages, so the summary and the cards always agree."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import urlencode

from books.errors import error_advice, error_in_plain_words, error_public, error_technical
from books.models import Book, BookPage, PageVersion
from renders.estimates import book_estimate
from renders.lease import db_now
from renders.models import ComfyInstance, RenderAttempt
from workflows.services import page_values

Status = BookPage.Status
ACTIVE = (Status.QUEUED, Status.RENDERING)

# The status filter's choices: ?status=<key> shows the pages whose status is in the tuple.
FILTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "failed": ("Needs attention", (Status.FAILED,)),
    "pending": ("Pending", (Status.QUEUED, Status.RENDERING)),
    "done": ("Done", (Status.DONE,)),
}


# The status page shows this many cards at a time (``?part=2`` shows the next ones), so a
# 10,000-page book is not one 4 MB page; the summary always counts the whole book.
CARDS_PER_PART = 200
# A live update sends the pages changed since its cursor, minus this much: a change is stamped
# (updated_at = now()) when its statement starts, and may commit a moment after a poll read past it.
LIVE_OVERLAP = timedelta(seconds=5)


@dataclass(frozen=True)
class LiveCursor:
    """Where a tab's last live update left off: the database time of its read, the first pending
    page (the "Waiting for page N" of a book drawn in order) and a digest of everything else a
    card depends on besides its own row (which pages the view shows, any image server up)."""

    at: datetime
    first_active: int | None
    digest: str

    def __str__(self) -> str:
        return f"{self.at.timestamp():.6f}~{self.first_active or 0}~{self.digest}"

    @classmethod
    def parse(cls, text: str) -> LiveCursor | None:
        """None for anything malformed: the tab then gets every card, as on a first load."""
        try:
            at, first, digest = text.split("~")
            return cls(datetime.fromtimestamp(float(at), tz=UTC), int(first) or None, digest)
        except (ValueError, OverflowError, OSError):
            return None


def status_context(request: HttpRequest, book: Book, *, since: str = "") -> dict[str, Any]:
    """What the status page shows; the admin's status view shows the same. ``?status=failed``
    (or pending, done) shows only those pages, ``?part=2`` the next CARDS_PER_PART of them; the
    counts are always the whole book's.

    With ``since`` (the ``cursor`` of an earlier answer) only the cards changed since then are
    rendered (``partial``), and the summary: a poll of a 500-page book where nothing changed reads
    each page's status and time, and renders no card. The summary counts the same rows the cards
    show, so they never disagree."""
    now = _statement_time()
    previous = LiveCursor.parse(since) if since else None
    if previous is None:
        pages = list(book.pages.order_by("number"))
    else:
        # Only what the counts, the estimate and the waits need; the changed pages are read in full.
        pages = list(book.pages.order_by("number").only("book", "number", "status", "next_attempt_at", "updated_at"))
    counts = page_counts(pages)
    if request.user.pk == book.owner_id:
        actions = "owner"
    elif request.user.has_perm("books.change_bookpage"):
        actions = "admin"
    else:
        actions = ""
    chosen = request.GET.get("status", "")
    matching = [page for page in pages if chosen not in FILTERS or page.status in FILTERS[chosen][1]]
    parts = max(1, math.ceil(len(matching) / CARDS_PER_PART))
    part = min(int(request.GET["part"]), parts) if request.GET.get("part", "").isdigit() else 1
    part = max(part, 1)
    shown = matching[(part - 1) * CARDS_PER_PART : part * CARDS_PER_PART]
    context = _WaitContext(pages, any_instance_up=_any_instance_up() if counts[Status.QUEUED] else True)
    first_active = context.first_active if context.sequential else None
    digest = hashlib.sha1(
        repr((context.any_instance_up, counts["total"], [page.number for page in shown])).encode()
    ).hexdigest()[:12]
    cursor = LiveCursor(now, first_active, digest)
    partial = previous is not None and previous.digest == digest
    if previous is not None and not partial:
        return status_context(request, book)  # other cards than the tab has: send them all
    if previous is not None:
        fresh = _changed(shown, previous=previous, first_active=first_active)
        shown = [fresh[page.pk] for page in shown if page.pk in fresh]
        # The summary counts the rows the cards show, read just now.
        pages = [fresh.get(page.pk, page) for page in pages]
        counts = page_counts(pages)
    shown_with_image = [page for page in shown if page.image_attempt]
    successes = _successful_attempts(shown_with_image)
    versions = _versions(shown_with_image)
    tab_state, tab_title = tab_state_and_title(book, counts)
    query = {key: value for key, value in (("status", chosen if chosen in FILTERS else ""), ("part", part)) if value}
    return {
        "book": book,
        "tab_state": tab_state,
        "tab_title": tab_title,
        "pages": [
            page_view(
                page,
                waits=context,
                success=successes.get(page.pk),
                internals=request.user.is_staff,
                versions=versions.get(page.pk, []),
            )
            for page in shown
        ],
        "partial": partial,
        "cursor": str(cursor),
        "first_active": first_active,
        "counts": counts,
        "active": counts[Status.QUEUED] + counts[Status.RENDERING] > 0,
        # Its place in the queue and when it should be done, from measured render times.
        "estimate": (
            book_estimate(book_id=book.pk, pages=pages) if counts[Status.QUEUED] + counts[Status.RENDERING] else None
        ),
        "workflow_title": book.style.name,
        "actions": actions,
        "filter": chosen if chosen in FILTERS else "",
        "filters": [(key, label, sum(counts[s] for s in statuses)) for key, (label, statuses) in FILTERS.items()],
        "live_query": urlencode(query if part > 1 else {k: v for k, v in query.items() if k != "part"}),
        "parts": [
            {
                "number": n,
                "first": matching[(n - 1) * CARDS_PER_PART].number,
                "last": matching[min(n * CARDS_PER_PART, len(matching)) - 1].number,
                "query": urlencode({**query, "part": n}),
            }
            for n in range(1, parts + 1)
        ]
        if parts > 1
        else [],
        "part": part,
    }


def _statement_time() -> datetime:
    """The database's clock now, as the ``Now()`` that stamps ``updated_at`` reads it (on
    PostgreSQL the statement's time, not the transaction's)."""
    if connection.vendor != "postgresql":
        return db_now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT STATEMENT_TIMESTAMP()")
        value: datetime = cursor.fetchone()[0]
    return value


def _changed(shown: list[BookPage], *, previous: LiveCursor, first_active: int | None) -> dict[int, BookPage]:
    """The pages among ``shown`` (read with few fields) changed since ``previous``, read in full,
    in one query, by id. Besides the pages whose row changed: when the first pending page of a
    book drawn in order moved, the pages between the old and the new one (the script rewrites
    the "Waiting for page N" of the others); when there was none before or is none now, all."""
    since = previous.at - LIVE_OVERLAP
    wanted = {page.pk for page in shown if page.updated_at is None or page.updated_at >= since}
    if first_active != previous.first_active:
        low, high = sorted((first_active or 0, previous.first_active or 0))
        wanted |= {page.pk for page in shown if low <= page.number <= high or not (low and high)}
    if not wanted:
        return {}
    # A page deleted since the light read is simply left out; the next poll's digest sees it.
    return {page.pk: page for page in BookPage.objects.filter(pk__in=wanted)}


def tab_state_and_title(book: Book, counts: dict[str, int]) -> tuple[str, str]:
    """The book's state for the tab's icon, and the tab's title: a tab left in the background says
    when the book is done or needs attention."""
    if counts[Status.FAILED]:
        need = "needs" if counts[Status.FAILED] == 1 else "need"
        return "failed", f"⚠ {counts[Status.FAILED]} {need} attention · {book.title} · bookrender"
    if counts[Status.QUEUED] + counts[Status.RENDERING]:
        return "active", f"({counts[Status.DONE]}/{counts['total']}) {book.title} · bookrender"
    if counts["total"]:
        return "done", f"✓ {book.title} · bookrender"
    return "", f"{book.title} · bookrender"


def _versions(pages: list[BookPage]) -> dict[int, list[int]]:
    """The attempts of each page's kept versions, newest first, in one query."""
    found: dict[int, list[int]] = {}
    rows = PageVersion.objects.filter(page__in=pages).order_by("-attempt").values_list("page_id", "attempt")
    for page_id, attempt in rows:
        found.setdefault(page_id, []).append(attempt)
    return found


def page_counts(pages: list[BookPage]) -> dict[str, int]:
    counts = {status.value: 0 for status in Status}
    for page in pages:
        counts[page.status] += 1
    counts["total"] = len(pages)
    return counts


def page_view(
    page: BookPage,
    *,
    waits: _WaitContext,
    success: RenderAttempt | None,
    internals: bool = False,
    versions: list[int] | None = None,
) -> dict[str, Any]:
    """What a card shows of a page. Without ``internals`` (not staff): no ComfyUI URLs or raw
    exception text, only what the error means."""
    raw = page.latest_error
    latest = raw if internals or not raw else error_public(raw)
    wait = page_wait(page, waits=waits)
    # The last error shows at once while the page waits to retry it, not only once it gave up.
    show_error = latest is not None and (page.status == Status.FAILED or bool(wait and wait["after_error"]))
    retrying = page.status != Status.FAILED
    return {
        "page": page,
        "error_text": error_in_plain_words(latest) if latest and show_error else "",
        "error_advice": error_advice(latest, retrying=retrying) if latest and show_error else "",
        "error": (
            {
                **latest,
                "at": parse_datetime(str(latest.get("at") or "")),
                "technical": error_technical(raw, internals=internals),
            }
            if latest and raw
            else None
        ),
        "earlier_errors": [
            {**entry, "text": error_in_plain_words(entry)} if internals else error_public(entry)
            for entry in reversed(page.image_error[:-1])
        ],
        "wait": wait,
        # Every successful render is kept; with more than one, the card offers the others.
        "versions": versions if versions and len(versions) > 1 else [],
        "drawn_with": _drawn_with(page, success) if page.image else None,
        # Changes whenever the card would look different, so the script replaces only those cards.
        "version": "-".join(
            str(part)
            for part in (
                page.status,
                page.attempt,
                page.image_attempt or 0,
                page.retry_count,
                (page.job_metadata.get("deferred") or {}).get("at", ""),
                page.next_attempt_at.timestamp() if page.next_attempt_at else "",
            )
        ),
    }


class _WaitContext:
    """What the reasons for waiting depend on besides the page itself."""

    def __init__(self, pages: list[BookPage], *, any_instance_up: bool) -> None:
        self.any_instance_up = any_instance_up
        self.sequential = not settings.COMFY_ALLOW_PARALLEL_PAGES
        self.first_active = next((page.number for page in pages if page.status in ACTIVE), None)
        self.now = timezone.now()


def page_wait(page: BookPage, *, waits: _WaitContext) -> dict[str, Any] | None:
    """Why a pending page is waiting, and until when, from fields the pipeline already stores:
    ``retry_count`` and the run's ``retry_base`` (a retry after an error, in backoff until
    ``next_attempt_at``), ``job_metadata["deferred"]`` (no free slot, low VRAM), the instances'
    state (none up) and, for books rendered one page at a time, the page ahead of it."""
    if page.status != Status.QUEUED:
        return None
    run = page.job_metadata.get("run") or {}
    retries_in_run = page.retry_count - int(run.get("retry_base", 0))
    until = page.next_attempt_at if page.next_attempt_at and page.next_attempt_at > waits.now else None
    seconds = math.ceil((until - waits.now).total_seconds()) if until else 0
    deferred = page.job_metadata.get("deferred") or {}
    deferred_at = parse_datetime(str(deferred.get("at") or ""))
    latest = page.latest_error
    latest_at = parse_datetime(str(latest.get("at") or "")) if latest else None
    run_at = parse_datetime(str(run.get("at") or ""))
    wait: dict[str, Any] = {"until": until, "seconds": seconds, "after_error": False}
    newest = max((at for at in (latest_at, run_at) if at), default=None)
    if deferred_at and until and (newest is None or deferred_at > newest):
        note = str(deferred.get("note") or "")
        reason = "The graphics card is low on memory." if "VRAM" in note else "Every image server is busy or down."
        return {**wait, "text": f"Trying again in {seconds} s", "reason": reason}
    if retries_in_run > 0 and latest is not None and latest.get("attempt") == page.attempt - 1:
        of = settings.COMFY_MAX_RETRIES + 1
        attempt = f"attempt {retries_in_run + 1} of {of}"
        text = f"Retrying in {seconds} s ({attempt})" if until else f"Retrying now ({attempt})"
        return {**wait, "text": text, "reason": "", "after_error": True}
    if not waits.any_instance_up:
        return {**wait, "text": "Waiting for an image server", "reason": "No image server is answering right now."}
    if waits.sequential and waits.first_active is not None and waits.first_active < page.number:
        return {
            **wait,
            "text": f"Waiting for page {waits.first_active}",
            "behind": True,  # the live script rewrites the number as the book moves on
            "reason": "This book is drawn one page at a time, in order.",
        }
    return {**wait, "text": "Waiting for a free GPU", "reason": ""}


def _any_instance_up() -> bool:
    """False only when instances are known and every one is down (none known yet: not probed)."""
    enabled = ComfyInstance.objects.filter(enabled=True)
    return enabled.filter(state=ComfyInstance.State.UP).exists() or not enabled.exists()


def _successful_attempts(pages: list[BookPage]) -> dict[int, RenderAttempt]:
    """The attempt that drew each page's image, in one query."""
    if not pages:
        return {}
    wanted = Q()
    for page in pages:
        wanted |= Q(page_id=page.pk, number=page.image_attempt)
    return {attempt.page_id: attempt for attempt in RenderAttempt.objects.filter(wanted)}


def _drawn_with(page: BookPage, success: RenderAttempt | None) -> dict[str, Any]:
    values = page_values(page)
    width, height = values.get("width"), values.get("height")
    started: datetime | None = success.started_at or success.submitted_at or success.created_at if success else None
    finished = (success.comfy_finished_at or success.finished_at) if success else None
    return {
        "seed": success.seed if success else page.overrides.get("seed"),
        "width": width,
        "height": height,
        "negative_prompt": page.negative_prompt,
        "render_seconds": round((finished - started).total_seconds(), 1) if started and finished else None,
    }
