"""Per-user webhooks: a settled book POSTs a signed JSON event to the owner's URL, through a real
local HTTP server; private addresses are refused unless the operator allows them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from books.models import Book, BookPage, Webhook
from books.notifications import book_notify_if_settled
from books.tasks import WEBHOOK_RETRY_SEC, send_webhook
from books.webhooks import WebhookError, webhook_save, webhook_send
from tests.books.conftest import page_set

Status = BookPage.Status


class Receiver:
    """A real HTTP server on a loopback port that records what it is sent and answers the codes
    it is given, in turn (the last repeats)."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k: v for k, v in self.headers.items()}, body))
                code = receiver.codes[min(len(receiver.received), len(receiver.codes)) - 1]
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([204])
    yield server
    server.close()


def queued_webhooks() -> list[tuple[int, dict[str, Any]]]:
    found = []
    for raw in redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange("maintenance", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "books.tasks.send_webhook":
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append((args[0], args[1]))
    return found


def test_a_webhook_to_a_private_or_unusable_address_is_refused_with_a_clear_error(alice, alice_client):
    response = alice_client.post("/account/webhook", {"url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "127.0.0.1 is a private or local address (127.0.0.1)" in html
    assert "BOOKRENDER_WEBHOOK_ALLOW_PRIVATE" in html
    assert 'value="http://127.0.0.1:9/hook"' in html  # what was typed stays in the form
    for url, reason in (
        ("ftp://example.com/x", "The address must start with http:// or https://"),
        ("http://10.1.2.3/x", "is a private or local address"),
        ("http://[::1]:8000/x", "is a private or local address"),
    ):
        with pytest.raises(WebhookError, match=reason):
            webhook_save(user=alice, url=url)
    assert not Webhook.objects.exists()


@override_settings(BOOKRENDER_WEBHOOK_ALLOW_PRIVATE=True)
def test_a_settled_book_posts_a_signed_event_to_its_owners_webhook(alice, alice_client, book, broker, receiver):
    response = alice_client.post("/account/webhook", {"url": receiver.url})
    assert response.status_code == 302
    hook = Webhook.objects.get(user=alice)
    assert len(hook.secret) == 64
    for number in (1, 2, 3):
        page_set(book, number, Status.DONE)

    book_notify_if_settled(book_id=book.pk)  # alice has no email address: only the webhook
    [(user_id, event)] = queued_webhooks()  # for the maintenance worker, not sent in the worker
    webhook_send(user_id=user_id, event=event)

    [(headers, body)] = receiver.received
    expected = "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Bookrender-Signature"] == expected
    assert headers["X-Bookrender-Event"] == "book.ready"
    data = json.loads(body)
    assert data["event"] == "book.ready"
    assert data["book"] == {
        "id": book.pk,
        "title": "The Fox",
        "url": f"http://127.0.0.1:8000/books/{book.pk}/",
        "pages_done": 3,
        "pages_failed": 0,
    }
    assert Webhook.objects.get(pk=hook.pk).last_result == "ok"
    assert "Last delivery" in alice_client.get("/account/webhook").content.decode()


@override_settings(BOOKRENDER_WEBHOOK_ALLOW_PRIVATE=True)
def test_a_webhook_that_fails_is_retried_later_then_given_up_and_says_why(alice, book, broker):
    from celery.exceptions import Retry

    failing = Receiver([500])
    try:
        webhook_save(user=alice, url=failing.url)
        event = {"event": "book.needs_attention", "book": {"id": book.pk}}
        # As the maintenance worker runs it: the first failure is tried again later, via the broker.
        as_worker: dict[str, Any] = {"called_directly": False, "id": "send-1", "args": [alice.pk, event], "kwargs": {}}
        send_webhook.push_request(**{**as_worker, "retries": 0})
        try:
            with pytest.raises(Retry):
                send_webhook.run(alice.pk, event)
        finally:
            send_webhook.pop_request()
        assert queued_webhooks() == [(alice.pk, event)]
        send_webhook.push_request(**{**as_worker, "retries": len(WEBHOOK_RETRY_SEC)})
        try:
            with pytest.raises(WebhookError, match="answered 500"):  # the last: given up
                send_webhook.run(alice.pk, event)
        finally:
            send_webhook.pop_request()
    finally:
        failing.close()
    assert len(failing.received) == 2
    assert Webhook.objects.get(user=alice).last_result == f"not delivered: {failing.url} answered 500"
    assert Book.objects.filter(pk=book.pk).exists()  # nothing else was touched
