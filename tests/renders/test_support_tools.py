"""What support sees in Flower and the logs: render tasks named by book and page, and the
maintenance tasks kept out of the way (no task events, no beat log line a second)."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings

from books.services import PageSpec, book_create
from config.celery import app
from renders.tasks import render_page
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


def test_a_render_task_names_its_book_page_and_attempt_for_flower(alice, broker):
    book = book_create(owner=alice, title="The Fox", style="model-free", pages=[PageSpec("a"), PageSpec("b")])
    page = book.pages.get(number=2)
    render_page.apply_async((page.pk, page.attempt))
    raw = redis.Redis.from_url(settings.CELERY_BROKER_URL).lpop("celery")
    assert isinstance(raw, bytes)
    headers = json.loads(raw)["headers"]
    assert headers["kwargsrepr"] == repr({"book": book.pk, "title": "The Fox", "page": 2, "attempt": 1})
    assert headers["argsrepr"] == f"({page.pk}, 1)"  # unchanged: tools parse it
    assert headers["task"] == "renders.tasks.render_page"


def test_a_new_books_render_tasks_are_named_for_flower_too(alice, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        book = book_create(owner=alice, title="The Owl", style="model-free", pages=[PageSpec("a"), PageSpec("b")])
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # Kombu pushes on the left and workers pop on the right: the right end is page 1's message.
    messages = [json.loads(raw)["headers"] for raw in reversed(client.lrange("celery", 0, -1))]
    pages = {page.number: page for page in book.pages.all()}
    assert [h["kwargsrepr"] for h in messages] == [
        repr({"book": book.pk, "title": "The Owl", "page": n, "attempt": 1}) for n in (1, 2)
    ]
    assert [h["argsrepr"] for h in messages] == [f"({pages[n].pk}, 1)" for n in (1, 2)]


def test_the_maintenance_tasks_send_no_task_events():
    assert app.tasks["renders.tasks.sweep"].send_events is False
    assert app.tasks["renders.tasks.probe_instances"].send_events is False
    assert app.tasks["renders.tasks.render_page"].send_events is True


def test_beat_sends_the_maintenance_tasks_without_a_log_line_each(start_beat, broker, tmp_path):
    from renders.tasks import SWEEP_HEARTBEAT_KEY

    start_beat()  # with the maintenance worker that runs what beat sends, as the units do
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(SWEEP_HEARTBEAT_KEY)
    runs: set[object] = set()

    def swept_five_times() -> bool:
        value = client.get(SWEEP_HEARTBEAT_KEY)
        if value:
            runs.add(value)
        return len(runs) >= 5

    wait_for(swept_five_times, timeout=60, interval=0.2, message="beat sent no maintenance tasks")
    log = (tmp_path / "beat-0.log").read_text()
    assert "Sending due task" not in log


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_is_a_failure_in_flower_naming_the_book_and_page_and_nothing_retries_it(
    alice, simulator, start_worker, broker
):
    """Through a real worker and Celery's own events (what Flower shows): each failed attempt is a
    task-failed naming the book, page and error; the database's retry runs, Celery's none."""
    import threading

    from books.models import BookPage

    events: list[dict[str, object]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        listener = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        listener.start()
        try:
            start_worker(COMFYUI_URLS=simulator.url, COMFY_RETRY_BACKOFF_SEC="0.2")
            wait_for(lambda: any(str(e["type"]).startswith("worker-") for e in events), timeout=30)
            book = book_create(
                owner=alice, title="Flaky", style="model-free", pages=[PageSpec("A heron [sim:validation]")]
            )
            page = book.pages.get()
            wait_for(lambda: BookPage.objects.get(pk=page.pk).status == BookPage.Status.FAILED, timeout=60)

            def failed() -> list[dict[str, object]]:
                return [e for e in events if e["type"] == "task-failed"]

            wait_for(lambda: len(failed()) == 2, timeout=30, message=f"task-failed events: {failed()}")
        finally:
            receiver.should_stop = True
    first, second = (str(e["exception"]) for e in failed())
    assert f"page 1 of book {book.pk} “Flaky”, attempt 1 failed (validation: " in first
    assert first.endswith("it will be retried')")
    assert f"page 1 of book {book.pk} “Flaky”, attempt 2 failed (validation: " in second
    assert second.endswith("it needs attention')")
    # Celery retried nothing and requeued nothing: two submissions, the two the database decided.
    assert simulator.stats()["submitted"] == 2
    assert not [e for e in events if e["type"] == "task-retried"]
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.llen("celery") == 0 and client.hlen("unacked") == 0
