from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, before_task_publish, task_prerun, worker_init

from renders.worker_gate import HealthGate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("bookrender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Workers take render work only while one of their ComfyUI instances answers.
app.steps["worker"].add(HealthGate)


@worker_init.connect
def _refuse_bad_configuration(**_: object) -> None:
    """Workers do not run Django's checks by themselves; a malformed setting must stop them too."""
    from django.core import checks

    errors = [m for m in checks.run_checks() if m.level >= checks.ERROR]
    if errors:
        raise SystemExit("bookrender: bad configuration:\n" + "\n".join(str(m) for m in errors))


@task_prerun.connect
def _database_connection_checked(**_: object) -> None:
    """What Django does at the start of each web request: drop a connection that is too old or
    broken (a restarted PostgreSQL, a killed backend) so the task starts on a good one. Celery
    keeps connections between tasks because CELERY_DB_REUSE_MAX is set."""
    from django.db import close_old_connections

    close_old_connections()


@before_task_publish.connect
def _name_the_page(sender: str | None = None, headers: dict[str, object] | None = None, **_: object) -> None:
    """Flower shows a task's kwargs: make a render task's read
    "{'book': 12, 'title': 'The Fox', 'page': 7, 'attempt': 2}" rather than "{}", so support can find
    why page 7 of a book failed. The args stay "(431, 2)", which tools and tests parse. A publisher
    that named its pages already (renders.services._publish, one query for a whole book) is left
    alone; a failed lookup leaves the kwargs as they were."""
    if sender != "renders.tasks.render_page" or not headers or headers.get("kwargsrepr") not in (None, "{}"):
        return
    page_id, attempt = _render_args(headers.get("argsrepr"))
    if page_id is None or attempt is None:
        return
    named = render_kwargsreprs([(page_id, attempt)])
    if named:
        headers["kwargsrepr"] = named[(page_id, attempt)]


def render_kwargsreprs(messages: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Flower's kwargs for render messages (page id, attempt), from one query; {} when the
    database does not answer."""
    from django.db import DatabaseError

    from books.models import BookPage

    try:
        rows = BookPage.objects.filter(pk__in={page_id for page_id, _ in messages}).values_list(
            "pk", "book_id", "book__title", "number"
        )
        pages = {pk: (book_id, title, number) for pk, book_id, title, number in rows}
    except DatabaseError:
        return {}
    return {
        (page_id, attempt): _kwargsrepr(book_id, title, number, attempt)
        for page_id, attempt in messages
        if page_id in pages
        for book_id, title, number in [pages[page_id]]
    }


def render_kwargsrepr(page: Any) -> str:
    """Flower's kwargs for one page's render message, from a page whose book is loaded."""
    return _kwargsrepr(page.book_id, page.book.title, page.number, page.attempt)


def _kwargsrepr(book_id: int, title: str, number: int, attempt: int) -> str:
    return repr({"book": book_id, "title": title[:60], "page": number, "attempt": attempt})


def _render_args(argsrepr: object) -> tuple[int | None, int | None]:
    """(page_id, attempt) from a render task's argsrepr "(431, 2)"."""
    parts = str(argsrepr or "").strip("()[] ").split(",")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return None, None


@beat_init.connect
def _no_sent_events_from_beat(sender: object = None, **_: object) -> None:
    """Beat publishes only the maintenance tasks, one a second: their task-sent events would flood
    Flower's task list. (Their workers do not send events for them either: CELERY_TASK_ANNOTATIONS.)"""
    app.conf.task_send_sent_event = False
