from __future__ import annotations

import ipaddress
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from renders.metrics import BookrenderCollector

REGISTRY = CollectorRegistry()
REGISTRY.register(BookrenderCollector())
# process_start_time_seconds: the "more than 3 restarts an hour" alert counts its changes.
REGISTRY.register(ProcessCollector(registry=None))


def _may_scrape(request: HttpRequest) -> bool:
    """With BOOKRENDER_METRICS_TOKEN, bearers of the token. Without one, nobody unless DEBUG is on,
    and then loopback and private addresses: behind the reverse proxy we document, every request
    comes from 127.0.0.1, so an address says nothing about who is asking."""
    token = settings.BOOKRENDER_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return secrets.compare_digest(given.encode(), token.encode())
    if not settings.DEBUG:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return address.is_loopback or address.is_private


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for bearers of BOOKRENDER_METRICS_TOKEN (see _may_scrape)."""
    if not _may_scrape(request):
        return HttpResponse(
            "metrics are private: send Authorization: Bearer <BOOKRENDER_METRICS_TOKEN>\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The web app is up and reaches its database (compose healthchecks, the health server)."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return HttpResponse(f"database unreachable: {type(exc).__name__}\n", status=503, content_type="text/plain")
    return HttpResponse("ok\n", content_type="text/plain")
