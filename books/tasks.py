"""Celery tasks of books: thin wrappers that take ids and call a service."""

from __future__ import annotations

from celery import shared_task

from books.notifications import book_notify_if_settled


@shared_task(name="books.tasks.notify_book", ignore_result=True, soft_time_limit=30, time_limit=60)
def notify_book(book_id: int) -> bool:
    return book_notify_if_settled(book_id=book_id)
