"""Configuration sanity as Django system checks. Each error stops start-up (manage.py commands,
the web server, and Celery workers through config/celery.py) with a message naming the problem."""

from __future__ import annotations

import difflib
import os
from typing import Any

from celery.app.defaults import NAMESPACES as CELERY_NAMESPACES
from celery.app.defaults import flatten
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from config import env
from config.logging import SECRET_URL_VARIABLES, SECRET_VARIABLES, redact

# Celery's own setting names, for catching CELERY_* typos in the settings module.
# Plus the one that Celery's Django fixup reads directly, outside its settings table.
_CELERY_KEYS = {"CELERY_" + str(item[0]).upper() for item in flatten(CELERY_NAMESPACES)} | {"CELERY_DB_REUSE_MAX"}


@register(Tags.compatibility)
def check_environment(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(
            _problem_text(problem),
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


def _problem_text(problem: env.EnvError) -> str:
    """The problem, naming the variable. A value that may hold a password (a database URL) is not
    repeated: workers print these messages, and the health server serves their logs."""
    if problem.name in SECRET_VARIABLES or problem.name in SECRET_URL_VARIABLES:
        text = problem.problem.replace(problem.value, "<value>") if problem.value else problem.problem
        return redact(f"{problem.name} (value not shown): {text}")
    return redact(f"{problem.name}={problem.value!r}: {problem.problem}")


# Placeholders this project has shipped; any of them in production means nobody set a key.
PLACEHOLDER_SECRET_KEYS = {
    "dev-only-insecure-key-change-me",
    "change-me-to-a-long-random-string",
    "compose-dev-only-insecure-key",
}


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """`check --deploy` (bookrender-migrate, compose's migrate) refuses a placeholder or weak key,
    which would let anyone forge sessions and password-reset links."""
    key = str(settings.SECRET_KEY)
    if settings.DEBUG:
        return []
    if key in PLACEHOLDER_SECRET_KEYS or "change-me" in key or "insecure" in key:
        problem = "is a placeholder"
    elif len(key) < 50 or len(set(key)) < 5:
        problem = "is too short (at least 50 characters, 5 of them different)"
    else:
        return []
    return [
        Error(
            f"DJANGO_SECRET_KEY {problem}",
            hint="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
            id="renders.E017",
        )
    ]


# Flower logins this project has shipped as examples or for `make run`.
PLACEHOLDER_FLOWER_LOGINS = {"admin:change-me", "admin:admin-password"}


@register(Tags.security, deploy=True)
def check_flower_login(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Flower reads FLOWER_BASIC_AUTH itself; the env file that sets it is read by this check too
    (bookrender-migrate), so a placeholder or an empty login stops start-up before Flower serves
    the queue, and its unauthenticated /metrics, with it."""
    login = os.environ.get("FLOWER_BASIC_AUTH")
    if settings.DEBUG or login is None or settings.BOOKRENDER_FLOWER_PORT == 0:
        return []
    user, _, password = login.partition(":")
    if login in PLACEHOLDER_FLOWER_LOGINS or not user or len(password) < 12:
        return [
            Error(
                "FLOWER_BASIC_AUTH is empty, a placeholder or a password under 12 characters",
                hint="Set user:password with a long random password, or BOOKRENDER_FLOWER_PORT=0.",
                id="renders.E018",
            )
        ]
    return []


@register(Tags.compatibility)
def check_workflows(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    from renders.workflows import BUILTIN_DIR, workflow_load_dir

    # The built-in templates are seeded into the registry: a broken one would break migrate.
    _found, errors = workflow_load_dir(BUILTIN_DIR)
    messages: list[CheckMessage] = [Error(str(exc), id="renders.E003") for exc in errors]
    if settings.BOOKRENDER_WORKFLOWS_DIR:
        messages.append(
            Error(
                "BOOKRENDER_WORKFLOWS_DIR is no longer read: workflows live in the database now",
                hint="Register the folder's templates once with `manage.py import_workflows DIR`, then unset it.",
                id="renders.E004",
            )
        )
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
    # A retry's message waits out its backoff in a worker, unacknowledged (a countdown): Redis
    # hands it to another worker once the visibility timeout passes, so the page would run twice.
    longest_backoff = max(settings.COMFY_RETRY_BACKOFF_SEC) * 1.1  # with its jitter
    if longest_backoff >= visibility:
        messages.append(
            Error(
                f"the longest COMFY_RETRY_BACKOFF_SEC ({max(settings.COMFY_RETRY_BACKOFF_SEC):g} s, "
                f"{longest_backoff:g} s with jitter) must be below CELERY_VISIBILITY_TIMEOUT ({visibility})",
                hint="Redis redelivers a message held longer than the visibility timeout: the retry would run twice.",
                id="renders.E020",
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
                id="renders.E019",
            )
        ]
    return []
