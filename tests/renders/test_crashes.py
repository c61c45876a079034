"""Crashes cost seconds, never a page: a SIGKILLed worker, a ComfyUI that dies mid-book, a Redis
restart. Real worker and beat processes, PostgreSQL, Redis and the simulator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from books.models import BookPage
from books.services import PageSpec, book_create
from ops.devstack import free_port, start_embedded_redis
from renders.models import RenderAttempt
from tests.conftest import database_url, wait_for

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


def report(name: str, **figures: Any) -> None:
    """Measured figures go to test-artifacts/ (and stdout with -s), for the issue notes."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))
    print(name, figures)


def book_of(owner, pages: int):
    return book_create(
        owner=owner, title="Crash", style="model-free", pages=[PageSpec(f"page {n}") for n in range(1, pages + 1)]
    )


def all_done(book, timeout: float) -> None:
    def not_done() -> str:
        return f"pages not done: {list(book.pages.exclude(status=Status.DONE).values_list('number', 'status'))}"

    wait_for(
        lambda: book.pages.exclude(status=Status.DONE).count() == 0, timeout=timeout, interval=0.25, message=not_done
    )


def assert_one_image_per_page(book) -> None:
    for page in book.pages.all():
        files = list(Path(page.image.path).parent.glob(f"page-{page.number:04d}-*"))
        assert [f.name for f in files] == [Path(page.image.name).name], page.number
        assert page.retry_count == len(page.image_error)


def test_a_killed_worker_costs_seconds_and_its_prompt_is_not_submitted_again(
    alice, simulator, start_worker, start_beat, broker
):
    simulator.set_faults(render_time="5")
    env = {"COMFYUI_URLS": simulator.url, "COMFY_LEASE_SEC": "3", "COMFY_POLL_INTERVAL_SEC": "0.5"}
    doomed = start_worker(concurrency=1, **env)
    start_beat(**env)
    page = book_of(alice, 1).pages.get()
    wait_for(
        lambda: simulator.stats()["submitted"] == 1 and BookPage.objects.get(pk=page.pk).status == Status.RENDERING
    )

    doomed.kill()  # SIGKILL, the main process and its pool child at once
    killed_at = time.monotonic()
    start_worker(concurrency=1, **env)

    def rendering_again() -> bool:
        current = BookPage.objects.get(pk=page.pk)
        return current.status == Status.RENDERING and bool(current.job_metadata.get("resumes"))

    wait_for(rendering_again, timeout=30, interval=0.05)
    recovered_s = time.monotonic() - killed_at
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=30)

    page.refresh_from_db()
    assert recovered_s <= 15
    assert page.attempt == 1 and page.retry_count == 0 and page.image_attempt == 1
    [attempt] = RenderAttempt.objects.filter(page=page)
    assert simulator.stats()["submissions"] == {str(attempt.prompt_id): 1}  # re-attached, not resubmitted
    assert "resumed after a lost worker" in attempt.telemetry["FallbackNotes"]
    assert_one_image_per_page(page.book)
    report(
        "worker-sigkill-recovery",
        seconds_to_rendering_again=round(recovered_s, 2),
        submissions=simulator.stats()["submitted"],
    )


def test_a_comfyui_crash_mid_book_resubmits_only_what_was_lost(alice, simulator, start_worker, start_beat, broker):
    simulator.set_faults(render_time="0.4", crash_after=6)
    env = {"COMFYUI_URLS": simulator.url, "COMFY_RETRY_BACKOFF_SEC": "1,2,3", "COMFY_POLL_INTERVAL_SEC": "0.5"}
    start_worker(concurrency=4, **env)
    start_beat(**env)  # the shipped topology: the prober notices the restarted instance
    stop = threading.Event()
    crashes: list[float] = []

    def restart_when_dead() -> None:
        while not stop.is_set():
            if not simulator.alive():
                crashes.append(time.monotonic())
                simulator.restart()  # like systemd: back in a moment, queue and history gone
            time.sleep(0.1)

    watcher = threading.Thread(target=restart_when_dead, daemon=True)
    watcher.start()
    try:
        book = book_of(alice, 12)
        all_done(book, timeout=90)
    finally:
        stop.set()
        watcher.join()

    assert len(crashes) == 1
    submitted = RenderAttempt.objects.filter(page__book=book, submitted_at__isnull=False)
    lost = [a for a in submitted if a.outcome == "failed"]
    assert lost, "the crash should have cost at least the prompt that was running"
    assert all(a.error["kind"] == "unavailable" for a in lost)
    assert submitted.count() == 12 + len(lost)
    assert_one_image_per_page(book)
    report(
        "comfyui-crash-12-pages",
        submissions=submitted.count(),
        lost_in_crash=len(lost),
        pages_done=book.pages.filter(status=Status.DONE).count(),
    )


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of our own, so the test can restart it; this process publishes to it too."""
    from config.celery import app

    port = free_port()
    url = f"redis://127.0.0.1:{port}/1"
    # One dict, shared with the test: it swaps in the restarted server, which teardown must stop.
    state = {
        "process": start_embedded_redis(port, tmp_path / "redis"),
        "port": port,
        "url": url,
        "dir": tmp_path / "redis",
    }
    old = app.conf.broker_url
    app.conf.broker_url = url
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None
    settings.CELERY_BROKER_URL = url
    yield state
    state["process"].kill()
    state["process"].wait()
    app.conf.broker_url = old
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None


def test_a_redis_restart_mid_book_loses_no_page(alice, simulator, start_worker, start_beat, private_redis):
    simulator.set_faults(render_time="0.3")
    env = {"COMFYUI_URLS": simulator.url, "REDIS_URL": private_redis["url"], "CELERY_BROKER_URL": private_redis["url"]}
    worker = start_worker(concurrency=2, **env)
    start_beat(**env)
    book = book_of(alice, 12)
    wait_for(lambda: book.pages.filter(status=Status.DONE).count() >= 3, timeout=30)

    private_redis["process"].kill()  # Redis keeps nothing on disk here: every queued message is gone
    private_redis["process"].wait()
    time.sleep(1)
    private_redis["process"] = start_embedded_redis(private_redis["port"], private_redis["dir"])
    restarted_at = time.monotonic()

    # Now and then kombu's Redis transport fails while it closes the lost connection (restoring
    # unacked messages through a channel whose connection is already gone: "Unrecoverable error:
    # AttributeError ... 'hostname'") and the worker exits, at no set time. systemd restarts it
    # (Restart=on-failure in bookrender-worker@.service); do the same here, whenever it happens.
    # What must hold either way: no page lost.
    restarted_worker = False
    deadline = time.monotonic() + 90
    while book.pages.exclude(status=Status.DONE).exists():
        if not worker.alive():
            assert "Unrecoverable error" in worker.log(), worker.log()[-3000:]
            worker, restarted_worker = start_worker(concurrency=2, **env), True
        not_done = list(book.pages.exclude(status=Status.DONE).values_list("number", "status"))
        assert time.monotonic() < deadline, f"pages not done: {not_done}"
        time.sleep(0.25)
    assert_one_image_per_page(book)
    report(
        "redis-restart-12-pages",
        seconds_from_restart_to_all_done=round(time.monotonic() - restarted_at, 1),
        worker_restarted_like_systemd=restarted_worker,
    )


def test_a_task_starts_on_a_working_connection_after_postgresql_dropped_the_kept_one():
    """Workers keep their database connection between tasks (CELERY_DB_REUSE_MAX); the check at
    each task's start replaces one that PostgreSQL dropped in between, as Django does per request."""
    import psycopg
    from django.db import connection

    from config.celery import _database_connection_checked

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    assert settings.CELERY_DB_REUSE_MAX and settings.DATABASES["default"]["CONN_HEALTH_CHECKS"]

    def backend_pid() -> int:
        _database_connection_checked()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    kept = backend_pid()
    assert backend_pid() == kept  # a healthy connection is kept
    with psycopg.connect(database_url(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [kept])
    assert backend_pid() != kept
