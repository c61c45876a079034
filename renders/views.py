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
    token = settings.BOOKRENDER_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return secrets.compare_digest(given, token)
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return address.is_loopback or address.is_private


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: with BOOKRENDER_METRICS_TOKEN set, for bearers of the token; without
    one, only for loopback and private addresses (the scraper next door, not the internet)."""
    if not _may_scrape(request):
        return HttpResponse(
            "metrics are private: send the token or scrape from a private address\n",
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
