"""Render events: Django signals for in-process listeners, and one JSON log line each."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

log = logging.getLogger("bookrender.events")

# Sent after the transaction that made the change commits; kwargs: page, attempt, instance, error.
page_retry = Signal()  # book.page.retry
page_failed = Signal()  # book.page.failed
page_done = Signal()  # book.page.done

_SIGNALS = {
    "book.page.retry": page_retry,
    "book.page.failed": page_failed,
    "book.page.done": page_done,
}


def emit(
    event: str,
    *,
    page: Any,
    attempt: int,
    instance: str = "",
    error: dict[str, Any] | None = None,
) -> None:
    log.info(
        event,
        extra={
            "event": event,
            "book": page.book_id,
            "page": page.number,
            "page_id": page.pk,
            "attempt": attempt,
            "instance": instance,
            "error_kind": (error or {}).get("kind"),
        },
    )
    _SIGNALS[event].send(sender=type(page), page=page, attempt=attempt, instance=instance, error=error)
