"""The client and the pipeline against a real ComfyUI on CPU (installed by ops/comfyui.py; see
tests/realcomfyui.py): every error kind a model-free graph can produce, a 12-page book, a kill -9 of
ComfyUI mid-book, a killed worker that re-attaches, a regenerate that really runs, and a custom
node the installer put in place. One ComfyUI serves the whole module."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest

from books.models import BookPage
from books.services import PageSpec, book_create
from renders.comfy import ComfyClient, ComfyError, ErrorKind
from renders.models import RenderAttempt
from tests.conftest import wait_for
from tests.realcomfyui import DONE_MARKER_CLASS
from tests.renders.test_comfy_client import page_graph, render
from tests.renders.test_crashes import report
from tests.workflows.test_registry import check_against_object_info

Status = BookPage.Status


def client_for(comfy: Any) -> ComfyClient:
    return ComfyClient(comfy.url, timeout=30, poll_interval=0.5)


def slow_graph(blurs: int = 40) -> dict[str, Any]:
    """A chain of heavy blurs: seconds per node on CPU. ComfyUI checks for an interrupt between
    nodes, so a chain stops soon after an interrupt where one big node would run to its end. Its
    colour is new each time: ComfyUI would serve an identical graph that once finished from its
    cache, in no time."""
    colour = random.randrange(1, 0xFFFFFF)
    graph: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": colour}}
    }
    for n in range(2, blurs + 2):
        graph[str(n)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [str(n - 1), 0], "blur_radius": 31, "sigma": 10.0},
        }
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": [str(blurs + 1), 0], "filename_prefix": "slow"}}
    return graph


def test_it_renders_a_page_and_fetches_the_image(real_comfyui):
    client = client_for(real_comfyui)
    result = render(client, page_graph(), timeout=120)
    assert result.entry.status == "success"
    [image] = result.entry.images_of("6")
    assert client.view(image)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_400_is_a_validation_error_naming_the_node(real_comfyui):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(ComfyError) as caught:
        client_for(real_comfyui).submit(graph, prompt_id=str(uuid.uuid4()))
    assert caught.value.kind is ErrorKind.VALIDATION and not caught.value.retryable
    assert (caught.value.node_id, caught.value.node_type) == ("1", "EmptyImage")


def test_a_200_with_node_errors_is_a_validation_error_and_the_prompt_is_taken_off_the_queue(real_comfyui):
    graph = page_graph()
    graph["10"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}}
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "x"}}
    client = client_for(real_comfyui)
    prompt_id = str(uuid.uuid4())
    with pytest.raises(ComfyError) as caught:
        client.submit(graph, prompt_id=prompt_id)
    assert caught.value.kind is ErrorKind.VALIDATION and caught.value.node_id == "10"
    assert prompt_id not in client.queue().pending


def test_a_node_that_cannot_allocate_is_an_execution_error_not_oom(real_comfyui):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 4096, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    result = render(client_for(real_comfyui), graph, timeout=120)
    assert result.entry.status == "error"
    assert result.entry.error.kind is ErrorKind.EXECUTION and result.entry.error.retryable
    assert result.entry.error.exception_type == "RuntimeError" and result.entry.error.node_id == "1"


def test_an_interrupted_prompt_is_an_interrupted_error(real_comfyui):
    client = client_for(real_comfyui)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(slow_graph(), prompt_id=prompt_id)
        wait_for(lambda: client.locate(prompt_id).state == "running", timeout=60)

        # Until it ends: an interrupt that lands between the prompt leaving the queue and its
        # execution starting is cleared when it starts (API.md §5), as the worker's cancel knows.
        def interrupted() -> bool:
            client.interrupt(prompt_id)
            return client.locate(prompt_id).state != "running"

        wait_for(interrupted, timeout=120, interval=1.0)
        result = watcher.wait(prompt_id, timeout=120)
    assert result.entry.status == "interrupted"
    assert result.entry.error.kind is ErrorKind.INTERRUPTED and result.entry.error.retryable


def test_a_prompt_that_runs_too_long_times_out_and_is_cancelled_for_sure(real_comfyui):
    client = client_for(real_comfyui)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(slow_graph(), prompt_id=prompt_id)
        with pytest.raises(ComfyError) as caught:
            watcher.wait(prompt_id, timeout=3)
    assert caught.value.kind is ErrorKind.TIMEOUT and caught.value.retryable
    assert client.cancel(prompt_id, confirm_within=120) is True
    entry = client.history(prompt_id)
    assert entry is not None and entry.status == "interrupted"


def test_the_installed_custom_node_is_offered_and_runs(real_comfyui):
    client = client_for(real_comfyui)
    assert DONE_MARKER_CLASS in client.node_classes()
    prefix = f"marker-{uuid.uuid4().hex[:8]}"
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {"class_type": DONE_MARKER_CLASS, "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }
    result = render(client, graph, timeout=120)
    assert result.entry.status == "success"
    assert (real_comfyui.output_dir / f"{prefix}_00001_.png").is_file()
    assert (real_comfyui.output_dir / f"{prefix}.done").read_text() == "1 image(s)\n"


# --- the pipeline: PostgreSQL, Redis, real Celery workers -----------------------------------------


def book_of(owner, pages: int, **overrides: int):
    specs = [PageSpec(f"page {n}, a fox by the sea", overrides=dict(overrides)) for n in range(1, pages + 1)]
    return book_create(owner=owner, title="Real", style="model-free", pages=specs)


def states(book) -> list[tuple[int, str, int]]:
    return list(book.pages.order_by("number").values_list("number", "status", "retry_count"))


@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_a_twelve_page_book_survives_a_kill_9_of_comfyui(alice, real_comfyui, start_worker, start_beat, broker):
    env = {"COMFYUI_URLS": real_comfyui.url, "COMFY_POLL_INTERVAL_SEC": "0.5"}
    start_worker(concurrency=4, **env)
    # A real restart takes long enough for routing to mark the instance down; only the probe
    # that beat runs every second marks it up again (the simulator's restart is too quick for that).
    start_beat(**env)
    book = book_of(alice, 12)
    wait_for(lambda: book.pages.filter(status=Status.DONE).count() >= 4, timeout=300, interval=0.1)

    real_comfyui.kill9()
    killed_at = time.monotonic()
    real_comfyui.start()  # as systemd would; a real ComfyUI takes 10-40 s to answer again
    real_comfyui.wait_ready()
    answered_at = time.monotonic()
    done_at_answer = book.pages.filter(status=Status.DONE).count()
    try:
        wait_for(lambda: book.pages.filter(status=Status.DONE).count() > done_at_answer, timeout=300, interval=0.1)
        first_after = time.monotonic()
        wait_for(lambda: book.pages.exclude(status=Status.DONE).count() == 0, timeout=300, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; pages (number, status, retries): {states(book)}") from None
    all_done = time.monotonic()

    submitted = RenderAttempt.objects.filter(page__book=book, submitted_at__isnull=False)
    lost = [a for a in submitted if a.outcome == "failed"]
    assert all(a.error["kind"] == "unavailable" for a in lost)
    assert submitted.count() == 12 + len(lost)  # only what the crash lost was submitted again
    for page in book.pages.all():
        assert page.image and page.image_attempt == page.attempt
    report(
        "real-comfyui-kill9-12-pages",
        submissions=submitted.count(),
        lost_to_the_crash=len(lost),
        comfyui_restart_s=round(answered_at - killed_at, 1),
        first_page_done_after_answering_s=round(first_after - answered_at, 2),
        all_done_after_answering_s=round(all_done - answered_at, 1),
    )


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_re_attaches_to_its_prompt(alice, real_comfyui, start_worker, start_beat, broker):
    env = {"COMFYUI_URLS": real_comfyui.url, "COMFY_LEASE_SEC": "3", "COMFY_POLL_INTERVAL_SEC": "0.5"}
    doomed = start_worker(concurrency=1, **env)
    start_beat(**env)
    # A 4096 x 4096 page takes seconds on CPU: long enough to kill the worker while it renders.
    page = book_of(alice, 1, width=4096, height=4096).pages.get()
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.RENDERING, timeout=120, interval=0.05)

    doomed.kill()
    start_worker(concurrency=1, **env)
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=300, interval=0.25)

    page.refresh_from_db()
    assert page.attempt == 1 and page.retry_count == 0
    [attempt] = RenderAttempt.objects.filter(page=page)  # re-attached, not submitted again
    assert attempt.outcome == RenderAttempt.Outcome.SUCCESS
    assert page.job_metadata.get("resumes")


@pytest.mark.django_db(transaction=True)
def test_a_regenerate_really_runs_and_gives_new_bytes(alice, real_comfyui, start_worker, broker):
    from renders.services import page_enqueue

    start_worker(COMFYUI_URLS=real_comfyui.url)
    page = book_of(alice, 1, width=256, height=256).pages.get()
    wait_for(lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=300)
    first = BookPage.objects.get(pk=page.pk).image.read()

    assert page_enqueue(page_id=page.pk, by="user:test", reason="regenerate").queued
    wait_for(lambda: BookPage.objects.get(pk=page.pk).image_attempt == 2, timeout=300)

    page.refresh_from_db()
    one, two = RenderAttempt.objects.filter(page=page).order_by("number")
    assert one.seed != two.seed and one.prompt_id != two.prompt_id
    assert page.image.read() != first  # a new seed, new noise: ComfyUI really ran it


@pytest.mark.django_db(transaction=True)
def test_an_input_image_and_an_animated_output_really_run(alice, real_comfyui, start_worker, broker, s3):
    """The two model-free templates of issue 15 on a real ComfyUI, with the files in the bucket:
    the worker uploads the input with /upload/image, LoadImage reads it; SaveAnimatedWEBP writes
    a three-frame animated WebP that the worker fetches and stores."""
    import io

    from django.core.files.storage import default_storage
    from PIL import Image

    from books.inputs import input_image_store

    start_worker(COMFYUI_URLS=real_comfyui.url, **s3.env())
    sketch = io.BytesIO()
    Image.new("RGB", (300, 200), "blue").save(sketch, "PNG")
    coloured = book_create(
        owner=alice,
        title="Sketch",
        style="model-free-input",
        pages=[PageSpec("colour me", input_image=input_image_store(sketch.getvalue()))],
    ).pages.get()
    moving = book_create(
        owner=alice, title="Moving", style="model-free-animated", pages=[PageSpec("blink")]
    ).pages.get()

    for page in (coloured, moving):
        wait_for(
            lambda page=page: BookPage.objects.get(pk=page.pk).status in (Status.DONE, Status.FAILED),
            timeout=300,
        )
        page.refresh_from_db()
        assert page.status == Status.DONE, page.image_error
    with default_storage.open(str(coloured.image.name), "rb") as stored, Image.open(stored) as image:
        assert image.size == (512, 512)
        r, _, b = image.convert("RGB").getpixel((256, 256))
        assert b > 150 and r < 100
    with default_storage.open(str(moving.image.name), "rb") as stored, Image.open(stored) as image:
        assert image.format == "WEBP" and image.is_animated and image.n_frames == 3
    assert str(moving.image.name).endswith(".webp")


def test_a_workflow_is_checked_against_real_comfyuis_object_info(real_comfyui):
    check_against_object_info(real_comfyui.url)
