"""Slow is not dead: a ComfyUI that is slow but alive costs no page, no file and no second
submission; lost answers and lost wake-ups are found; sequential books keep their order. Real
worker and beat processes, PostgreSQL, Redis and the simulator."""

from __future__ import annotations

import itertools
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from books.models import BookPage
from books.services import PageSpec, book_create
from ops.faults.audit import audit_books
from renders import services
from renders.lease import db_now
from renders.models import ComfyInstance, RenderAttempt
from tests.conftest import wait_for
from tests.renders.test_crashes import report

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)


def small_book(owner, pages: int, prompt: str = "page {n}"):
    return book_create(
        owner=owner,
        title="Slow",
        style="model-free",
        pages=[PageSpec(prompt.format(n=n), overrides={"width": 32, "height": 32}) for n in range(1, pages + 1)],
    )


def all_settled(book, timeout: float) -> None:
    wait_for(
        lambda: not book.pages.filter(status__in=(Status.QUEUED, Status.RENDERING)).exists(),
        timeout=timeout,
        interval=0.25,
        message=f"pages not settled: {list(book.pages.values_list('number', 'status', 'attempt'))}",
    )


def resumes(book) -> int:
    return sum(sum(page.job_metadata.get("resumes", {}).values()) for page in book.pages.all())


def test_a_comfyui_slower_than_half_the_lease_costs_no_file_no_resume_and_no_second_submission(
    alice, simulator, start_worker, start_beat, broker
):
    """Every HTTP answer takes 1.6 s against a 3 s lease (the issue's reproduction, which resumed
    live workers' pages in 3 runs of 3 and lost a file in 1): the lease thread keeps every lease."""
    simulator.set_faults(latency=1.6, render_time="0.2")
    env = {"COMFYUI_URLS": simulator.url, "COMFY_LEASE_SEC": "3", "COMFY_POLL_INTERVAL_SEC": "0.5"}
    start_worker(concurrency=4, **env)
    start_beat(**env)
    book = small_book(alice, 12)
    all_settled(book, timeout=300)

    stats = simulator.stats()
    attempts = list(RenderAttempt.objects.filter(page__book=book))
    per_attempt = [stats["submissions"].get(str(a.prompt_id), 0) for a in attempts]
    problems = audit_books(book_ids=[book.pk], media_root=Path(settings.MEDIA_ROOT), submissions=stats["submissions"])
    report(
        "slow-comfyui",
        latency_s=1.6,
        lease_s=3,
        pages=12,
        resumes=resumes(book),
        cancelled_prompts=stats["interrupted"],
        submissions_per_attempt=sorted(set(per_attempt)),
        audit_problems=problems,
    )
    assert set(book.pages.values_list("status", flat=True)) == {Status.DONE}
    assert problems == []  # every Done page's file exists and is its own; no stray file
    assert resumes(book) == 0
    assert stats["interrupted"] == 0
    assert per_attempt == [1] * len(attempts) and len(attempts) == 12


def test_six_second_answers_with_the_default_settings_finish_every_page(
    alice, simulator, start_worker, start_beat, broker
):
    """6 s is inside the client's 10 s timeout: the prober, the workers' gate and the client all
    call that answering, so nothing is declared down and every page is Done."""
    simulator.set_faults(latency=6, render_time="0.2")
    env = {"COMFYUI_URLS": simulator.url}
    start_worker(concurrency=2, **env)
    start_beat(BOOKRENDER_SWEEP_INTERVAL_SEC="3", **env)
    book = small_book(alice, 4)
    all_settled(book, timeout=420)
    assert set(book.pages.values_list("status", flat=True)) == {Status.DONE}
    assert resumes(book) == 0
    assert simulator.stats()["interrupted"] == 0


def test_a_lost_answer_to_the_post_is_found_on_comfyui_and_not_submitted_again(alice, simulator, start_worker, broker):
    simulator.set_faults(prompt_answer_delay=3, render_time="0.5")
    start_worker(COMFYUI_URLS=simulator.url, COMFY_HTTP_TIMEOUT_SEC="1", COMFY_POLL_INTERVAL_SEC="0.5")
    page = small_book(alice, 1).pages.get()
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=60)
    [attempt] = RenderAttempt.objects.filter(page=page)
    assert simulator.stats()["submissions"] == {str(attempt.prompt_id): 1}
    assert attempt.submitted_at is not None and attempt.outcome == "success"
    assert any("found the prompt on ComfyUI" in note for note in attempt.telemetry["FallbackNotes"])


def queued_messages() -> list[tuple[int, int]]:
    """The (page id, attempt) of every render message waiting in Redis."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "renders.tasks.render_page":
            found.append(tuple(message["headers"]["argsrepr"].strip("()").split(", ")))
    return [(int(page_id), int(attempt)) for page_id, attempt in found]


def test_a_page_overdue_for_half_an_hour_is_republished_while_the_queue_holds_other_messages(alice, broker):
    book = small_book(alice, 2)
    lost, other = book.pages.order_by("number")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    services._publish([(other.pk, other.attempt)])  # an unrelated message sits in the queue
    long_ago = db_now() - timedelta(minutes=30)
    BookPage.objects.filter(pk=lost.pk).update(next_attempt_at=long_ago, published_at=long_ago)

    assert services.pages_sweep().republished == 1
    assert sorted(queued_messages()) == sorted([(other.pk, 1), (lost.pk, 1)])
    assert services.pages_sweep().republished == 0  # just published: no duplicate


@override_settings(COMFY_ALLOW_PARALLEL_PAGES=False)
def test_sweeps_of_a_sequential_book_add_no_duplicate_messages(alice, broker):
    book = small_book(alice, 3)
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    BookPage.objects.filter(book=book).update(published_at=None)
    for _ in range(10):
        services.pages_sweep()
    first = book.pages.get(number=1)
    assert queued_messages() == [(first.pk, 1)]  # the book's next page, once


@override_settings(COMFY_ALLOW_PARALLEL_PAGES=False)
def test_a_sequential_book_with_a_failing_page_keeps_its_order(alice, simulator, start_worker, start_beat, broker):
    """Page 2 fails once: its retry holds pages 3 and 4 (they never start before it settles), the
    retry is published by itself (not left to the sweeper), and nothing is submitted twice."""
    simulator.set_faults(render_time="0.2")
    env = {
        "COMFYUI_URLS": simulator.url,
        "COMFY_ALLOW_PARALLEL_PAGES": "false",
        "COMFY_RETRY_BACKOFF_SEC": "2",
        "COMFY_POLL_INTERVAL_SEC": "0.5",
    }
    start_worker(concurrency=4, **env)
    start_beat(**env)
    book = book_create(
        owner=alice,
        title="In order",
        style="model-free",
        pages=[
            PageSpec("page 1", overrides={"width": 32, "height": 32}),
            PageSpec("page 2 [sim:error]", overrides={"width": 32, "height": 32}),
            PageSpec("page 3", overrides={"width": 32, "height": 32}),
            PageSpec("page 4", overrides={"width": 32, "height": 32}),
        ],
    )
    # Page 2's marker fails it every time: after 1 + COMFY_MAX_RETRIES attempts it needs attention,
    # and only then do pages 3 and 4 render.
    all_settled(book, timeout=240)
    runs = sorted(RenderAttempt.objects.filter(page__book=book), key=lambda a: a.created_at)
    numbers = [a.page.number for a in runs]
    assert numbers == [1] + [2] * (1 + settings.COMFY_MAX_RETRIES) + [3, 4], numbers
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at <= later.created_at  # never two at once
    stats = simulator.stats()
    assert set(stats["submissions"].values()) == {1}
    assert book.pages.get(number=2).status == Status.FAILED
    assert list(book.pages.exclude(number=2).values_list("status", flat=True)) == [Status.DONE] * 3


def test_work_resumes_within_seconds_of_a_restarted_comfyui_answering(
    alice, simulator, start_worker, start_beat, broker
):
    """A real ComfyUI takes 14-38 s to restart. The instance is down for 20 s; once it answers,
    a worker's gate sees it and marks it up at once, rather than at the prober's backed-off round."""
    env = {"COMFYUI_URLS": simulator.url, "COMFY_POLL_INTERVAL_SEC": "0.5", "COMFY_RETRY_BACKOFF_SEC": "1"}
    start_worker(concurrency=2, **env)
    start_beat(**env)
    simulator.kill()
    wait_for(lambda: ComfyInstance.objects.filter(url=simulator.url, state="down").exists(), timeout=30)
    book = small_book(alice, 2)
    time.sleep(20)  # the restart's length: what is measured is what follows it
    simulator.restart()
    answered = time.monotonic()
    wait_for(lambda: simulator.stats()["submitted"] >= 1, timeout=60, interval=0.05)
    first_work_s = time.monotonic() - answered
    all_settled(book, timeout=60)
    report("restart-to-work", restart_s=20, first_submission_after_answer_s=round(first_work_s, 2))
    assert set(book.pages.values_list("status", flat=True)) == {Status.DONE}
    # The prober alone would have waited out its backoff; the gate checks every second.
    assert first_work_s < 5, first_work_s
