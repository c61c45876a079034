"""Telling a book's owner when the book has settled: every page is Done, or some need attention
and nothing is left to render. One email per settling, through Django's mail settings (the console
backend by default, which prints it to the log).

The render pipeline sends ``renders.events`` signals after each page finishes or fails; the
receivers here only publish a ``books.tasks.notify_book`` task to the maintenance queue, so a slow
mail server never holds up a render worker."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Max, Q
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError

from books.models import Book, BookPage, Webhook
from books.webhooks import webhook_event

Status = BookPage.Status
log = logging.getLogger("bookrender.notifications")


def book_notify_if_settled(*, book_id: int) -> bool:
    """Email the owner if the book has settled since the last notice. Returns whether it sent.

    1. A page still pending or rendering: not settled, nothing to say.
    2. Claim the notice: set ``notified_at`` only if it is older than the newest page change, and
       check that exactly one row changed (two pages settling at once both get here; one sends).
    3. Queue the owner's webhook event, if they set one (books/webhooks.py).
    4. Send one email saying how many pages are done and how many need attention."""
    pages = BookPage.objects.filter(book_id=book_id)
    if pages.filter(status__in=(Status.QUEUED, Status.RENDERING)).exists():
        return False
    latest = pages.aggregate(latest=Max("updated_at"))["latest"]
    if latest is None:
        return False
    claimed = (
        Book.objects.filter(pk=book_id)
        .filter(Q(notified_at__isnull=True) | Q(notified_at__lt=latest))
        .update(notified_at=timezone.now())
    )
    if claimed != 1:
        return False
    book = Book.objects.select_related("owner").get(pk=book_id)
    done = pages.filter(status=Status.DONE).count()
    failed = pages.filter(status=Status.FAILED).count()
    url = settings.BOOKRENDER_SITE_URL.rstrip("/") + reverse("books:status", args=[book.pk])
    if Webhook.objects.filter(user_id=book.owner_id).exists():
        from books.tasks import send_webhook

        send_webhook.delay(book.owner_id, webhook_event(book, done=done, failed=failed, url=url))
    if not book.owner.email:
        return False
    if failed:
        subject = (
            f"“{book.title}”: {failed} page{'s' if failed != 1 else ''} need{'s' if failed == 1 else ''} attention"
        )
        body = (
            f"{done} of {done + failed} pages of “{book.title}” are done; {failed} could not be drawn.\n"
            f"See why, and regenerate or edit them: {url}\n"
        )
    else:
        subject = f"“{book.title}” is ready: {done} page{'s' if done != 1 else ''} done"
        body = f"Every page of “{book.title}” is done.\nLook at it, or download it as a ZIP or PDF: {url}\n"
    send_mail(subject, body, None, [book.owner.email])
    return True


def _page_settled(sender: Any, page: BookPage, **_: Any) -> None:
    from books.tasks import notify_book

    # Most pages settle while others still render: one cheap check saves a task per page.
    if BookPage.objects.filter(book_id=page.book_id, status__in=(Status.QUEUED, Status.RENDERING)).exists():
        return
    try:
        notify_book.delay(page.book_id)
    except OperationalError:
        # The broker is down (Celery already retried). The page itself is safe; only this notice
        # is lost, and a render worker must not fail over an email.
        log.warning("book notice not sent: the broker is unreachable", extra={"book": page.book_id})


def connect() -> None:
    from renders import events

    events.page_done.connect(_page_settled, dispatch_uid="books.notifications.done")
    events.page_failed.connect(_page_settled, dispatch_uid="books.notifications.failed")
