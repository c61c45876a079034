"""The owner hears once when a book settles: every page done, or some needing attention."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings
from django.core import mail
from django.utils import timezone

from books.notifications import book_notify_if_settled
from renders import events
from tests.books.conftest import page_set

pytestmark = pytest.mark.django_db


@pytest.fixture
def mailed_book(book, alice):
    alice.email = "alice@example.com"
    alice.save()
    return book


def test_a_finished_book_sends_one_email_to_its_owner(mailed_book):
    book = mailed_book
    for number in (1, 2):
        page_set(book, number, "done")
    assert book_notify_if_settled(book_id=book.pk) is False  # page 3 is still pending
    page_set(book, 3, "done")
    assert book_notify_if_settled(book_id=book.pk) is True
    assert book_notify_if_settled(book_id=book.pk) is False  # once per settling
    (message,) = mail.outbox
    assert message.to == ["alice@example.com"]
    assert message.subject == "“The Fox” is ready: 3 pages done"
    assert f"http://127.0.0.1:8000/books/{book.pk}/" in message.body


def test_a_book_that_needs_attention_says_how_many_pages_and_again_after_a_regenerate(mailed_book):
    book = mailed_book
    page_set(book, 1, "done")
    page_set(book, 2, "failed")
    page_set(book, 3, "done")
    assert book_notify_if_settled(book_id=book.pk) is True
    assert mail.outbox[-1].subject == "“The Fox”: 1 page needs attention"
    page_set(book, 2, "done", updated_at=timezone.now())  # a regenerate settled it again, as page_finish does
    assert book_notify_if_settled(book_id=book.pk) is True
    assert mail.outbox[-1].subject == "“The Fox” is ready: 3 pages done"


def test_an_owner_without_an_address_gets_no_email(book):
    book.pages.update(status="done")
    assert book_notify_if_settled(book_id=book.pk) is False
    assert mail.outbox == []


def test_the_last_page_settling_publishes_the_notice_to_the_maintenance_queue(book, broker):
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    page = page_set(book, 1, "done")
    events.page_done.send(sender=type(page), page=page, attempt=1, instance="", error=None)
    assert queue.llen("maintenance") == 0  # pages 2 and 3 are still pending
    book.pages.update(status="done")
    events.page_done.send(sender=type(page), page=page, attempt=1, instance="", error=None)
    raw = queue.lpop("maintenance")
    assert isinstance(raw, bytes)
    message = json.loads(raw)
    assert message["headers"]["task"] == "books.tasks.notify_book"
    assert message["headers"]["argsrepr"] == f"({book.pk},)"


def test_an_unreachable_broker_loses_the_notice_not_the_page(book, monkeypatch, caplog):
    from kombu.exceptions import OperationalError

    from books import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.notify_book, "delay", broker_down)
    book.pages.update(status="done")
    page = book.pages.get(number=1)
    events.page_done.send(sender=type(page), page=page, attempt=1, instance="", error=None)  # does not raise
    assert "book notice not sent: the broker is unreachable" in caplog.text
