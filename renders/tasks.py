"""Celery tasks: thin wrappers that take ids and call the render service."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError, close_old_connections

from renders import render, routing, services


class AttemptFailed(Exception):
    """Raised by render_page after a failed attempt was recorded, so Flower (and every Celery
    event consumer) shows the attempt as FAILURE with the book, page and error named. Nothing
    about the page depends on it: the database already holds the retry or the failure, Celery does
    not retry (no autoretry), and the message is acknowledged like any that ends (acks_late acks a
    task that raised; only a lost worker requeues)."""


@shared_task(name="renders.tasks.render_page", ignore_result=True, throws=(AttemptFailed,))
def render_page(page_id: int, attempt: int) -> str:
    try:
        outcome = render.page_render(page_id=page_id, attempt=attempt)
    except (OperationalError, InterfaceError):
        # The database went away before the page was claimed: nothing changed. The sweeper
        # publishes the page again once it is overdue.
        close_old_connections()
        return "database unavailable"
    if outcome in ("retry", "failed"):
        raise AttemptFailed(services.attempt_failure_text(page_id=page_id, attempt=attempt, outcome=outcome))
    return outcome


# When the sweeper last ran: the health server's proof that beat (and a worker) are alive.
SWEEP_HEARTBEAT_KEY = "bookrender:sweep:last"


@shared_task(name="renders.tasks.sweep", ignore_result=True, soft_time_limit=30, time_limit=60)
def sweep() -> dict[str, int]:
    import time

    import redis
    from django.conf import settings

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).set(SWEEP_HEARTBEAT_KEY, str(time.time()), ex=3600)
    except redis.RedisError:
        pass  # the heartbeat is for monitoring; the sweep itself must run
    result = services.pages_sweep()
    # Fleet hosts that stopped heartbeating: stale, then offline (their instances get no work, and
    # the pages they held resume elsewhere once their leases run out).
    from fleets.hosts import hosts_sweep

    silent = hosts_sweep()
    return {"resumed": result.resumed, "republished": result.republished, **silent}


@shared_task(name="renders.tasks.probe_instances", ignore_result=True, soft_time_limit=20, time_limit=30)
def probe_instances() -> dict[str, bool]:
    return routing.instances_probe()
