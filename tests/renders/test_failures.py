"""Each failure kind ends as specified (issue 3, seed 004 §4.1), through real Celery workers,
PostgreSQL, Redis and the simulator on a real socket."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest
from django.test import override_settings

from books.models import BookPage
from books.services import PageSpec, book_create
from renders.models import RenderAttempt
from renders.services import page_enqueue, page_image_prefix
from tests.conftest import wait_for

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)
# Fast retries and polling, so each scenario takes seconds; the real schedule is tested in
# test_services.py by its scheduled times.
FAST = {"COMFY_RETRY_BACKOFF_SEC": "0.2", "COMFY_POLL_INTERVAL_SEC": "0.5"}


def one_page(owner, prompt: str = "a fox by the sea") -> BookPage:
    book = book_create(owner=owner, title="The Fox", style="model-free", pages=[PageSpec(prompt=prompt)])
    return book.pages.get()


def settled(page: BookPage, timeout: float = 45) -> BookPage:
    def done() -> BookPage | None:
        current = BookPage.objects.get(pk=page.pk)
        return current if current.status in (Status.DONE, Status.FAILED) else None

    return wait_for(done, timeout=timeout, message=f"page {page.pk} never settled")


def attempts(page: BookPage) -> list[RenderAttempt]:
    return list(RenderAttempt.objects.filter(page=page).order_by("number"))


def assert_consistent(page: BookPage) -> None:
    """What must hold for every page, whatever happened: retry_count counts the failed attempts,
    and attempt numbers only increase."""
    assert page.retry_count == len(page.image_error)
    numbers = [e["attempt"] for e in page.image_error]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert [a.number for a in attempts(page)] == sorted(a.number for a in attempts(page))


def test_an_oom_frees_gpu_memory_and_the_retry_renders(alice, simulator, start_worker, broker):
    simulator.set_faults(oom={"count": 1})
    start_worker(COMFYUI_URLS=simulator.url, **FAST)
    page = settled(one_page(alice))
    assert page.status == Status.DONE and page.retry_count == 1
    [error] = page.image_error
    assert error["kind"] == "oom" and error["node_type"] and error["exception_type"].endswith("OutOfMemoryError")
    assert error["message"].startswith("ComfyUI ran out of GPU memory on node")
    assert simulator.stats()["free_calls"] >= 1
    assert [a.outcome for a in attempts(page)] == ["failed", "success"]
    assert_consistent(page)


def test_a_validation_failure_is_retried_once_then_needs_regeneration(alice, simulator, start_worker, broker):
    start_worker(COMFYUI_URLS=simulator.url, **FAST)
    page = settled(one_page(alice, "a page [sim:validation]"))
    assert page.status == Status.FAILED and page.needs_regeneration
    assert [e["kind"] for e in page.image_error] == ["validation", "validation"]
    assert page.image_error[-1]["node_id"] and page.image_error[-1]["node_type"]
    assert page.get_status_display() == "Needs attention"
    assert_consistent(page)


def test_an_unreachable_instance_is_retried_on_another(alice, simulator, start_worker, broker):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start_worker(COMFYUI_URLS=f"{dead},{simulator.url}", **FAST)
    page = settled(one_page(alice))
    assert page.status == Status.DONE
    [error] = page.image_error
    assert error["kind"] == "unavailable" and error["instance"] == dead
    assert attempts(page)[-1].instance_url == simulator.url
    assert_consistent(page)


def test_a_render_that_never_finishes_is_cancelled_on_comfyui_and_retried(alice, simulator, start_worker, broker):
    simulator.set_faults(hang={"count": 1})
    start_worker(COMFYUI_URLS=simulator.url, COMFY_RENDER_TIMEOUT_SEC="2", **FAST)
    page = settled(one_page(alice))
    assert page.status == Status.DONE
    [error] = page.image_error
    assert error["kind"] == "timeout" and "cancelled on ComfyUI" in error["message"]
    assert simulator.stats()["interrupted"] == 1  # the hung prompt was really stopped
    first = attempts(page)[0]
    assert first.telemetry["HistoryExitReason"] == "maxWait"
    assert_consistent(page)


def test_garbage_from_comfyui_is_retried_and_the_error_says_so(alice, simulator, start_worker, broker):
    simulator.set_faults(garbage={"count": 1})
    start_worker(COMFYUI_URLS=simulator.url, **FAST)
    page = settled(one_page(alice))
    assert page.status == Status.DONE
    [error] = page.image_error
    assert error["kind"] == "protocol" and "not JSON" in error["message"]
    assert_consistent(page)


def test_a_node_error_at_run_time_is_retried(alice, simulator, start_worker, broker):
    simulator.set_faults(error={"count": 1})
    start_worker(COMFYUI_URLS=simulator.url, **FAST)
    page = settled(one_page(alice))
    assert page.status == Status.DONE
    assert [e["kind"] for e in page.image_error] == ["execution"]
    assert page.image_error[0]["exception_type"] == "RuntimeError"


def test_after_max_retries_the_page_needs_attention(alice, simulator, start_worker, broker):
    start_worker(COMFYUI_URLS=simulator.url, COMFY_MAX_RETRIES="2", **FAST)
    page = settled(one_page(alice, "a page [sim:oom]"))
    assert page.status == Status.FAILED and page.needs_regeneration
    assert page.retry_count == 3 and page.attempt == 3
    assert [a.outcome for a in attempts(page)] == ["failed"] * 3
    assert not page.image
    assert_consistent(page)


def test_low_vram_defers_the_page_without_using_a_retry(alice, tmp_path, start_worker, broker):
    from comfysim.testing import running_simulator

    with running_simulator(output_dir=tmp_path / "out", args=["--vram-free-mb", "500"]) as sim:
        start_worker(COMFYUI_URLS=sim.url, COMFY_MIN_VRAM_FREE_MB="1000", **FAST)
        page = one_page(alice)
        wait_for(lambda: BookPage.objects.get(pk=page.pk).job_metadata.get("deferred"), timeout=20)
        assert sim.stats()["free_calls"] >= 1  # it asked ComfyUI to free memory before deferring
        assert sim.stats()["submitted"] == 0
        sim.set_faults(vram_free_mb=12000)
        page = settled(page)
    assert page.status == Status.DONE
    assert page.retry_count == 0 and page.image_error == [] and page.attempt == 1
    [attempt] = attempts(page)
    assert attempt.telemetry["VramBeforeMB"] >= 1000
    assert attempt.telemetry["VramBeforeSource"] == "system_stats"


def test_a_rerun_while_the_old_attempt_renders_stores_only_the_new_image(alice, simulator, start_worker, broker):
    simulator.set_faults(render_time="3")
    start_worker(COMFYUI_URLS=simulator.url, concurrency=2, **FAST)
    page = one_page(alice)
    # Rendering on ComfyUI, not merely claimed: a rerun between the claim and the submission
    # supersedes the old attempt before it has a record, and there is nothing to compare.
    wait_for(lambda: RenderAttempt.objects.filter(page=page, submitted_at__isnull=False).exists())
    simulator.set_faults(render_time="0.2")
    assert page_enqueue(page_id=page.pk, by="admin:1", reason="admin_rerun", force=True).queued
    page = settled(page)
    assert page.status == Status.DONE and page.image_attempt == 2
    first, second = attempts(page)
    assert first.outcome == "superseded" and second.outcome == "success"
    stored = sorted(p.name for p in Path(page.image.path).parent.glob(f"page-{page.number:04d}-*"))
    assert stored == [Path(str(page.image.name)).name]  # one image, the new attempt's
    assert page.image.name.startswith(page_image_prefix(page, 2))
    assert [v.attempt for v in page.versions.all()] == [2]
    assert page.retry_count == 0


@override_settings(COMFY_ALLOW_PARALLEL_PAGES=False)
def test_without_parallel_pages_a_books_pages_render_one_after_another(alice, simulator, start_worker, broker):
    simulator.set_faults(render_time="0.3")
    start_worker(COMFYUI_URLS=simulator.url, COMFY_ALLOW_PARALLEL_PAGES="false", concurrency=4, **FAST)
    book = book_create(
        owner=alice, title="Slow", style="model-free", pages=[PageSpec(f"page {n}") for n in range(1, 5)]
    )
    wait_for(lambda: book.pages.filter(status=Status.DONE).count() == 4, timeout=45)
    runs = sorted(RenderAttempt.objects.filter(page__book=book), key=lambda a: a.created_at)
    assert [a.page.number for a in runs] == [1, 2, 3, 4]
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at <= later.created_at  # never two at once
