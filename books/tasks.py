"""Celery tasks of books: thin wrappers that take ids and call a service."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from books.notifications import book_notify_if_settled
from books.webhooks import WebhookError, webhook_send


@shared_task(name="books.tasks.notify_book", ignore_result=True, soft_time_limit=30, time_limit=60)
def notify_book(book_id: int) -> bool:
    return book_notify_if_settled(book_id=book_id)


# A delivery that fails is tried again after these many seconds (then given up, and the settings
# page says so): about 20 minutes in all.
WEBHOOK_RETRY_SEC = (10, 30, 90, 300, 900)


@shared_task(
    name="books.tasks.send_webhook",
    bind=True,
    ignore_result=True,
    max_retries=len(WEBHOOK_RETRY_SEC),
    soft_time_limit=30,
    time_limit=60,
)
def send_webhook(self: Task[Any, Any], user_id: int, event: dict[str, Any]) -> None:
    try:
        webhook_send(user_id=user_id, event=event)
    except WebhookError as exc:
        retries = int(self.request.retries)
        if retries < len(WEBHOOK_RETRY_SEC):
            raise self.retry(exc=exc, countdown=WEBHOOK_RETRY_SEC[retries]) from None
        raise
