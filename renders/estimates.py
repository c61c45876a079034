"""How long a book will take: its place in the queue and an estimated finish, from measured
render times. Read-only queries for the status page and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import DurationField, ExpressionWrapper, F, Sum

from books.models import BookPage
from renders.lease import db_now
from renders.models import ComfyInstance, RenderAttempt

Status = BookPage.Status
# Render times are averaged over this many recent successful attempts.
SAMPLE = 50


@dataclass(frozen=True)
class BookEstimate:
    pending: int  # this book's pages waiting
    rendering: int  # ... and rendering now
    ahead: int  # other books' pages due before this book's first pending page
    seconds_per_page: float | None  # measured, or None before the first success
    slots: int  # prompts the healthy instances take at once
    finish_at: datetime | None  # None when nothing is left, or nothing was measured yet


def seconds_per_page() -> float | None:
    """The mean claim-to-done time of the latest successful attempts."""
    took = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    recent = (
        RenderAttempt.objects.filter(outcome=RenderAttempt.Outcome.SUCCESS, finished_at__isnull=False)
        .order_by("-finished_at")
        .annotate(took=took)
        .values_list("took", flat=True)[:SAMPLE]
    )
    durations = [d.total_seconds() for d in recent if d is not None]
    return sum(durations) / len(durations) if durations else None


def book_estimate(*, book_id: int, pages: list[BookPage] | None = None) -> BookEstimate:
    """``pages``: the book's pages when the caller has read them already (the status page)."""
    if pages is None:
        pages = list(BookPage.objects.filter(book_id=book_id).only("status", "next_attempt_at"))
    queued = [page for page in pages if page.status == Status.QUEUED]
    counts = {
        "pending": len(queued),
        "rendering": sum(1 for page in pages if page.status == Status.RENDERING),
    }
    first_due = min((page.next_attempt_at for page in queued if page.next_attempt_at), default=None)
    ahead = 0
    if first_due is not None:
        # Other books' pages due earlier: one count, which reads no page of this book.
        ahead = (
            BookPage.objects.filter(status=Status.QUEUED, next_attempt_at__lt=first_due)
            .exclude(book_id=book_id)
            .count()
        )
    slots = ComfyInstance.objects.filter(enabled=True, state=ComfyInstance.State.UP).aggregate(n=Sum("slots"))["n"] or 0
    per_page = seconds_per_page()
    left = counts["pending"] + counts["rendering"]
    finish_at = None
    if left and per_page is not None and slots:
        # Rendering pages are half done on average; every slot takes pages in turn.
        work = (ahead + counts["pending"] + counts["rendering"] / 2) * per_page / slots
        finish_at = db_now() + timedelta(seconds=work)
    return BookEstimate(
        pending=counts["pending"],
        rendering=counts["rendering"],
        ahead=ahead,
        seconds_per_page=per_page,
        slots=slots,
        finish_at=finish_at,
    )
