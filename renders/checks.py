"""Configuration sanity as Django system checks. Each error stops start-up (manage.py commands,
the web server, and Celery workers through config/celery.py) with a message naming the problem."""

from __future__ import annotations

import difflib
from typing import Any

from celery.app.defaults import NAMESPACES as CELERY_NAMESPACES
from celery.app.defaults import flatten
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from config import env

# Celery's own setting names, for catching CELERY_* typos in the settings module.
# Plus the one that Celery's Django fixup reads directly, outside its settings table.
_CELERY_KEYS = {"CELERY_" + str(item[0]).upper() for item in flatten(CELERY_NAMESPACES)} | {"CELERY_DB_REUSE_MAX"}


@register(Tags.compatibility)
def check_environment(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(
            f"{problem.name}={problem.value!r}: {problem.problem}",
            hint=f"Fix or unset {problem.name}; its default is {env.KNOWN.get(problem.name, '')!r}.",
            id="renders.E001",
        )
        for problem in env.ERRORS
    ]
    for name in env.unknown_variables():
        close = difflib.get_close_matches(name, env.KNOWN, n=1)
        messages.append(
            Error(
                f"{name} is not a bookrender setting, so it would do nothing",
                hint=f"Did you mean {close[0]}?" if close else "See the configuration table in README.md.",
                id="renders.E002",
            )
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if settings.BOOKRENDER_REQUIRE_POSTGRES and "postgresql" not in engine:
        messages.append(
            Error(
                f"BOOKRENDER_REQUIRE_POSTGRES is set but the database is {engine}",
                hint="Point DATABASE_URL at PostgreSQL (postgres://user@host:5432/name).",
                id="renders.E005",
            )
        )
    return messages


@register(Tags.compatibility)
def check_workflows(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    from renders.workflows import workflow_load_all

    found, errors = workflow_load_all()
    messages: list[CheckMessage] = [Error(str(exc), id="renders.E003") for exc in errors]
    if not found:
        messages.append(Error("no usable workflow template", id="renders.E004"))
    return messages


@register(Tags.compatibility)
def check_celery(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name in dir(settings):
        if name.startswith("CELERY_") and name not in _CELERY_KEYS:
            messages.append(Error(f"{name} is not a Celery setting", id="renders.E010"))
    soft, hard = settings.CELERY_TASK_SOFT_TIME_LIMIT, settings.CELERY_TASK_TIME_LIMIT
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    if soft >= hard:
        messages.append(
            Error(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({soft}) must be below CELERY_TASK_TIME_LIMIT ({hard})",
                hint="The soft limit lets a task record its failure before the hard limit kills it.",
                id="renders.E011",
            )
        )
    if visibility <= hard:
        messages.append(
            Error(
                f"CELERY_VISIBILITY_TIMEOUT ({visibility}) must be above CELERY_TASK_TIME_LIMIT ({hard})",
                hint="Otherwise Redis redelivers messages whose tasks are still running.",
                id="renders.E012",
            )
        )
    if soft <= settings.COMFY_RENDER_TIMEOUT_SEC:
        messages.append(
            Error(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({soft}) must be above COMFY_RENDER_TIMEOUT_SEC "
                f"({settings.COMFY_RENDER_TIMEOUT_SEC:g})",
                hint="The render timeout cancels the prompt on ComfyUI; the task must live that long.",
                id="renders.E013",
            )
        )
    if not settings.CELERY_TASK_ACKS_LATE:
        messages.append(
            Warning(
                "CELERY_TASK_ACKS_LATE is off: a worker that dies loses its message",
                hint="The sweeper still recovers the page, but only after its lease lapses.",
                id="renders.W014",
            )
        )
    if settings.CELERY_WORKER_PREFETCH_MULTIPLIER != 1:
        messages.append(
            Warning(
                "CELERY_WORKER_PREFETCH_MULTIPLIER is not 1: a busy worker holds pages others could render",
                id="renders.W015",
            )
        )
    if settings.COMFY_LEASE_SEC * 3 > 60:
        messages.append(
            Warning("COMFY_LEASE_SEC is long: a dead worker's page waits that long to resume", id="renders.W016")
        )
    return messages


# A live worker's lease is renewed every COMFY_LEASE_SEC / 3 by its own thread, whatever the task
# is doing; below this the two renewals between a renewal and the lapse leave no room for a
# database that is slow for a moment.
MIN_LEASE_SEC = 3.0


@register(Tags.compatibility)
def check_lease(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    lease = settings.COMFY_LEASE_SEC
    if lease < MIN_LEASE_SEC:
        return [
            Error(
                f"COMFY_LEASE_SEC ({lease:g}) must be at least {MIN_LEASE_SEC:g}",
                hint=(
                    "A worker renews its lease every COMFY_LEASE_SEC / 3 seconds; shorter than this, "
                    "one slow database statement would let a live worker's lease lapse and its page "
                    "be handed to another worker."
                ),
                id="renders.E017",
            )
        ]
    return []
