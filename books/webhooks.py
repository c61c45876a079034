"""Per-user webhooks: when a book settles (every page done, or some need attention and nothing is
left to render), its owner's URL gets a POST of a JSON event, signed with HMAC-SHA256 under the
owner's secret. Sent by the maintenance worker (``books.tasks.send_webhook``, retried with backoff),
never by a render worker.

Server-side request forgery: a URL whose host resolves to a loopback, private, link-local or
otherwise non-public address is refused, when it is saved and again when it is sent (DNS may
change in between), unless BOOKRENDER_WEBHOOK_ALLOW_PRIVATE is on. Redirects are not followed."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.utils import timezone

from books.models import Book, Webhook

TIMEOUT_SEC = 10
SIGNATURE_HEADER = "X-Bookrender-Signature"


class WebhookError(ValueError):
    """A URL bookrender will not POST to, or a delivery that failed; the text says why."""


def webhook_url_check(url: str) -> None:
    """Raise WebhookError with a sentence for a URL that cannot be used."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("The address must start with http:// or https:// and name a host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError, UnicodeError):
        raise WebhookError(f"The host {parts.hostname} could not be found.") from None
    if settings.BOOKRENDER_WEBHOOK_ALLOW_PRIVATE:
        return
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise WebhookError(
                f"{parts.hostname} is a private or local address ({address}); bookrender only sends to "
                "public addresses (an operator can allow private ones with BOOKRENDER_WEBHOOK_ALLOW_PRIVATE)."
            )


def webhook_save(*, user: Any, url: str) -> Webhook:
    """Set the user's webhook URL (a new secret the first time); raises WebhookError."""
    webhook_url_check(url)
    hook, created = Webhook.objects.get_or_create(user=user, defaults={"url": url, "secret": secrets.token_hex(32)})
    if not created:
        hook.url = url
        hook.last_result = ""
        hook.save(update_fields=["url", "last_result", "updated_at"])
    return hook


def webhook_event(book: Book, *, done: int, failed: int, url: str) -> dict[str, Any]:
    return {
        "event": "book.needs_attention" if failed else "book.ready",
        "book": {"id": book.pk, "title": book.title, "url": url, "pages_done": done, "pages_failed": failed},
        "sent_at": timezone.now().isoformat(),
    }


def webhook_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_send(*, user_id: int, event: dict[str, Any]) -> None:
    """POST the event to the user's webhook; raises WebhookError when it was not accepted (the
    task retries). Records the outcome for the settings page."""
    hook = Webhook.objects.filter(user_id=user_id).first()
    if hook is None:
        return
    body = json.dumps(event, sort_keys=True).encode()
    try:
        webhook_url_check(hook.url)
        response = requests.post(
            hook.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "bookrender-webhook",
                "X-Bookrender-Event": str(event["event"]),
                SIGNATURE_HEADER: webhook_signature(hook.secret, body),
            },
            timeout=TIMEOUT_SEC,
            allow_redirects=False,
        )
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"{hook.url} answered {response.status_code}")
    except requests.RequestException as exc:
        _record(hook, f"not delivered: {type(exc).__name__}")
        raise WebhookError(f"{hook.url} could not be reached ({type(exc).__name__})") from None
    except WebhookError as exc:
        _record(hook, f"not delivered: {exc}")
        raise
    _record(hook, "ok")


def _record(hook: Webhook, result: str) -> None:
    Webhook.objects.filter(pk=hook.pk).update(last_result=result[:300], last_sent_at=timezone.now())
