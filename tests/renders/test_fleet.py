"""A fleet of ComfyUI instances: routing by slots, instances going down and coming back, workers
that take work only while their ComfyUI answers. Real workers, beat, PostgreSQL, Redis and three
simulators on real sockets."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from books.models import BookPage
from books.services import PageSpec, book_create
from comfysim.testing import running_simulator
from renders.models import ComfyInstance, RenderAttempt
from tests.conftest import wait_for

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)
FAST = {"COMFY_RETRY_BACKOFF_SEC": "0.5", "COMFY_POLL_INTERVAL_SEC": "0.5"}


@pytest.fixture
def three_simulators(tmp_path: Path):
    with ExitStack() as stack:
        yield [stack.enter_context(running_simulator(output_dir=tmp_path / f"gpu{n}")) for n in range(3)]


def book_of(owner, pages: int, title: str = "Fleet"):
    return book_create(
        owner=owner, title=title, style="model-free", pages=[PageSpec(f"page {n}") for n in range(1, pages + 1)]
    )


def done_count(book) -> int:
    return book.pages.filter(status=Status.DONE).count()


class DepthSampler:
    """Samples each instance's ComfyUI queue depth (GET /prompt) while a book renders."""

    def __init__(self, sims) -> None:
        self.sims, self.max_depth, self._stop = sims, {s.url: 0 for s in sims}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for sim in self.sims:
                try:
                    depth = sim.get("/prompt", timeout=1)["exec_info"]["queue_remaining"]
                    self.max_depth[sim.url] = max(self.max_depth[sim.url], depth)
                except Exception:
                    pass  # a killed instance does not answer
            time.sleep(0.02)

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_pages_spread_over_instances_and_slots_keep_each_queue_at_most_two_deep(
    alice, three_simulators, start_worker, start_beat, broker
):
    for sim in three_simulators:
        sim.set_faults(render_time="0.3")
    env = {"COMFYUI_URLS": ",".join(s.url for s in three_simulators), **FAST}
    # More worker processes than slots (3 x 2): the slots, not the pool size, bound each queue.
    start_worker(concurrency=8, **env)
    start_beat(**env)
    book = book_of(alice, 30)
    with DepthSampler(three_simulators) as sampler:
        wait_for(lambda: done_count(book) == 30, timeout=90)
    assert max(sampler.max_depth.values()) <= 2, sampler.max_depth
    assert min(sampler.max_depth.values()) == 2, sampler.max_depth  # every GPU was kept fed
    per_instance = {s.url: RenderAttempt.objects.filter(instance_url=s.url).count() for s in three_simulators}
    assert all(n >= 6 for n in per_instance.values()), per_instance
    assert all(p.retry_count == 0 for p in book.pages.all())


def test_an_instance_killed_mid_book_loses_no_page_and_gets_work_again_when_it_returns(
    alice, three_simulators, start_worker, start_beat, broker
):
    for sim in three_simulators:
        sim.set_faults(render_time="0.5")
    victim = three_simulators[0]
    env = {"COMFYUI_URLS": ",".join(s.url for s in three_simulators), **FAST}
    start_worker(concurrency=6, **env)
    start_beat(**env)
    book = book_of(alice, 24)
    wait_for(lambda: done_count(book) >= 4, timeout=30)

    victim.kill()
    wait_for(lambda: ComfyInstance.objects.get(url=victim.url).state == "down", timeout=20)
    wait_for(lambda: done_count(book) == 24, timeout=120)
    assert all(p.status == Status.DONE for p in book.pages.all())

    victim.restart()
    wait_for(lambda: ComfyInstance.objects.get(url=victim.url).state == "up", timeout=40)
    second = book_of(alice, 12, title="After")
    wait_for(lambda: done_count(second) == 12, timeout=60)
    assert RenderAttempt.objects.filter(page__book=second, instance_url=victim.url).exists()


def test_when_every_instance_is_down_pages_wait_without_using_retries(
    alice, simulator, start_worker, start_beat, broker
):
    simulator.set_faults(render_time="0.2")
    env = {"COMFYUI_URLS": simulator.url, **FAST}
    start_worker(concurrency=2, **env)
    start_beat(**env)
    simulator.kill()
    wait_for(lambda: ComfyInstance.objects.filter(url=simulator.url, state="down").exists(), timeout=20)
    book = book_of(alice, 4)
    time.sleep(6)
    assert book.pages.filter(status=Status.QUEUED).count() == 4  # waiting, not failing
    assert all(p.retry_count == 0 for p in book.pages.all())

    simulator.restart()
    wait_for(lambda: done_count(book) == 4, timeout=60)
    assert all(p.retry_count == 0 and p.image_error == [] for p in book.pages.all())


def test_a_worker_starting_up_waits_for_its_comfyui(alice, simulator, start_worker, broker):
    simulator.kill()
    worker = start_worker(concurrency=1, wait_ready=False, COMFYUI_URLS=simulator.url, **FAST)
    page = book_of(alice, 1).pages.get()
    wait_for(lambda: "waiting for ComfyUI" in worker.log(), timeout=20)
    time.sleep(2)
    assert BookPage.objects.get(pk=page.pk).status == Status.QUEUED
    assert "ready." not in worker.log()

    simulator.restart()
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=40)
    assert BookPage.objects.get(pk=page.pk).retry_count == 0


def test_a_worker_stops_taking_work_while_its_comfyui_is_down_and_resumes_by_itself(
    alice, simulator, start_worker, broker
):
    simulator.set_faults(render_time="0.2")
    worker = start_worker(concurrency=1, COMFYUI_URLS=simulator.url, **FAST)
    simulator.kill()
    wait_for(lambda: "not taking render work" in worker.log(), timeout=20)
    page = book_of(alice, 1).pages.get()
    time.sleep(3)
    assert BookPage.objects.get(pk=page.pk).status == Status.QUEUED  # the message waits in Redis

    simulator.restart()
    wait_for(lambda: "taking render work" in worker.log().split("not taking render work")[-1], timeout=20)
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=30)
    assert BookPage.objects.get(pk=page.pk).retry_count == 0


def test_a_worker_waiting_for_comfyui_stops_on_sigterm(start_worker, broker):
    """Waiting in its start-up gate, a worker still obeys systemd's stop (SIGTERM)."""
    import signal

    from ops.devstack import free_port

    worker = start_worker(concurrency=1, wait_ready=False, COMFYUI_URLS=f"http://127.0.0.1:{free_port()}")
    wait_for(lambda: "waiting for ComfyUI" in worker.log(), timeout=60)
    worker.kill(signal.SIGTERM)
    wait_for(lambda: not worker.alive(), timeout=60, message="the worker ignored SIGTERM while waiting for ComfyUI")
