"""The render pipeline end to end: PostgreSQL, Redis, real Celery worker processes and the
simulator on a real socket."""

from __future__ import annotations

import pytest
from PIL import Image

from books.models import BookPage
from books.services import PageSpec, book_create
from renders.models import RenderAttempt
from tests.conftest import attempt_history, wait_for

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)


def make_book(owner, prompts: list[str], style: str = "model-free"):
    return book_create(owner=owner, title="The Fox", style=style, pages=[PageSpec(prompt=p) for p in prompts])


def test_a_twelve_page_book_renders_every_page_exactly_once(alice, simulator, start_worker, broker):
    start_worker(COMFYUI_URLS=simulator.url, concurrency=4)
    book = make_book(alice, [f"page {n}, a fox by the sea" for n in range(1, 13)])

    wait_for(
        lambda: book.pages.filter(status=Status.DONE).count() == 12, timeout=60, message="not every page reached Done"
    )

    for page in book.pages.all():
        assert page.image_attempt == 1 and page.retry_count == 0 and page.image_error == [], attempt_history(page)
        with Image.open(page.image.path) as image:
            assert image.format == "PNG" and image.size == (768, 1024)
        attempt = RenderAttempt.objects.get(page=page)
        assert attempt.outcome == RenderAttempt.Outcome.SUCCESS
        assert str(attempt.prompt_id) == page.job_metadata["prompt_id"]
        assert attempt.instance_url == simulator.url == page.job_metadata["instance"]
        assert attempt.submitted_at <= attempt.finished_at
        for field in (
            "VramBeforeMB",
            "VramAfterMB",
            "HistoryAttempts",
            "HistoryExitReason",
            "ExecutionSuccessAt",
            "DoneMarkerDetected",
        ):
            assert field in attempt.telemetry, field
        assert attempt.telemetry["DoneMarkerDetected"] is True
    stats = simulator.stats()
    assert stats["submitted"] == 12
    assert set(stats["submissions"].values()) == {1}


def test_every_attempt_gets_a_fresh_seed_and_prompt_id(alice, simulator, start_worker, broker):
    from renders.services import page_enqueue

    start_worker(COMFYUI_URLS=simulator.url)
    book = make_book(alice, ["one page"])
    page = book.pages.get()
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE)
    first_image = BookPage.objects.get(pk=page.pk).image.name

    assert page_enqueue(page_id=page.pk, by="user:test", reason="regenerate").queued
    wait_for(lambda: BookPage.objects.get(pk=page.pk).image_attempt == 2)

    one, two = RenderAttempt.objects.filter(page=page).order_by("number")
    assert one.prompt_id != two.prompt_id and one.seed != two.seed
    page.refresh_from_db()
    assert page.image.name != first_image  # a regenerate is never served from ComfyUI's cache
    assert page.job_metadata["requests"][0]["by"] == "user:test"


def test_a_second_owners_small_book_finishes_while_the_first_owners_large_book_waits(
    alice, bob, simulator, start_worker, broker, settings
):
    """Fair scheduling: alice's 30 pages do not hold the one FIFO queue; bob's page, created just
    after them, goes out after at most alice's window, and nothing is lost or drawn twice."""
    settings.BOOKRENDER_OWNER_WINDOW = 2
    simulator.set_faults(render_time="0.3")
    start_worker(COMFYUI_URLS=simulator.url, concurrency=2, BOOKRENDER_OWNER_WINDOW="2")
    large = make_book(alice, [f"mile {n}" for n in range(1, 31)])
    small = make_book(bob, ["a heron in fog"])

    wait_for(lambda: small.pages.get().status == Status.DONE, timeout=60, message="bob's page never finished")
    bobs_done = small.pages.get().rendered_at
    wait_for(lambda: large.pages.filter(status=Status.DONE).count() == 30, timeout=120, message="alice's book stalled")

    # Event order, not timing: most of alice's pages were drawn after bob's.
    assert large.pages.filter(rendered_at__gt=bobs_done).count() >= 25
    assert simulator.stats()["submitted"] == 31
    assert set(simulator.stats()["submissions"].values()) == {1}
