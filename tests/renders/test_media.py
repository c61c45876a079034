"""Image inputs and animated outputs end to end, with the page files in the S3-compatible bucket
(moto's server, tests/s3server.py): real Celery workers, the simulator on a real socket. Also what
happens when an output node writes nothing, and when the bucket is down while a page finishes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from moto.server import ThreadedMotoServer
from PIL import Image

from books.inputs import input_image_store
from books.models import BookPage
from books.services import PageSpec, book_create
from ops.devstack import free_port
from renders.models import RenderAttempt
from tests.conftest import wait_for
from tests.s3server import S3Server

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)


def png(colour: str, size: tuple[int, int] = (300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def page_state(page_id: int) -> str:
    page = BookPage.objects.get(pk=page_id)
    return f"page is {page.status}, errors {page.image_error}, meta {page.job_metadata}"


def test_a_page_starts_from_its_input_image(
    alice: Any, simulator: Any, start_worker: Any, broker: Any, s3: S3Server
) -> None:
    start_worker(COMFYUI_URLS=simulator.url, **s3.env())
    red = input_image_store(png("red"))
    book = book_create(
        owner=alice, title="Sketches", style="model-free-input", pages=[PageSpec("colour me", input_image=red)]
    )
    page = book.pages.get()

    wait_for(
        lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=60, message=lambda: page_state(page.pk)
    )

    page.refresh_from_db()
    # The worker uploaded the input to the simulator's input folder, named by its content.
    uploaded = simulator.input_dir / "bookrender" / ("bookrender-" + red.rsplit("/", 1)[-1])
    assert uploaded.read_bytes() == png("red")
    # ... and LoadImage read it: the page is the red picture at the workflow's 512 x 512.
    with default_storage.open(str(page.image.name), "rb") as stored, Image.open(stored) as image:
        assert image.size == (512, 512)
        r, g, b = image.convert("RGB").getpixel((256, 256))
        assert r > 150 and g < 100 and b < 100
    submitted = RenderAttempt.objects.get(page=page)
    assert submitted.outcome == RenderAttempt.Outcome.SUCCESS
    assert str(page.image.name) in s3.keys("pages/")


def test_a_page_without_the_input_its_workflow_needs_needs_attention(
    alice: Any, simulator: Any, start_worker: Any, broker: Any, s3: S3Server
) -> None:
    start_worker(COMFYUI_URLS=simulator.url, **s3.env())
    book = book_create(owner=alice, title="Sketches", style="model-free-input", pages=[PageSpec("no sketch")])
    page = book.pages.get()

    wait_for(
        lambda: BookPage.objects.get(pk=page.pk).status == Status.FAILED,
        timeout=60,
        message=lambda: page_state(page.pk),
    )

    page.refresh_from_db()
    assert page.latest_error is not None and page.latest_error["kind"] == "validation"
    assert "input image" in str(page.latest_error["message"])
    assert simulator.stats()["submitted"] == 0


def test_an_animated_output_is_stored_as_animated_webp(
    alice: Any, simulator: Any, start_worker: Any, broker: Any, s3: S3Server
) -> None:
    start_worker(COMFYUI_URLS=simulator.url, **s3.env())
    book = book_create(owner=alice, title="Moving", style="model-free-animated", pages=[PageSpec("a blinking page")])
    page = book.pages.get()

    wait_for(
        lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE, timeout=60, message=lambda: page_state(page.pk)
    )

    page.refresh_from_db()
    assert str(page.image.name).endswith(".webp") and page.image_kind == "animated"
    with default_storage.open(str(page.image.name), "rb") as stored, Image.open(stored) as image:
        assert image.format == "WEBP" and image.is_animated and image.n_frames == 3
        assert image.size == (256, 256)


def test_an_output_node_that_writes_nothing_is_a_no_output_error_and_retried(
    alice: Any, simulator: Any, start_worker: Any, broker: Any, s3: S3Server, tmp_path: Path, settings: Any
) -> None:
    from workflows.models import Style, Workflow
    from workflows.services import version_create

    # SaveLatent writes a .latent file, listed under "latents": nothing a page can show.
    graph = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
        "3": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "{{PROMPT}}"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    workflow = Workflow.objects.create(name="Latent only", slug="latent-only")
    version = version_create(
        workflow=workflow,
        graph=graph,
        output_node="2",
        properties=[{"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True}],
    )
    Style.objects.create(name="Latent only", slug="latent-only", version=version)
    start_worker(COMFYUI_URLS=simulator.url, COMFY_MAX_RETRIES="1", COMFY_RETRY_BACKOFF_SEC="0.1", **s3.env())
    book = book_create(owner=alice, title="Latent", style="latent-only", pages=[PageSpec("nothing to see")])
    page = book.pages.get()

    wait_for(
        lambda: BookPage.objects.get(pk=page.pk).status == Status.FAILED,
        timeout=60,
        message=lambda: page_state(page.pk),
    )

    page.refresh_from_db()
    assert [e["kind"] for e in page.image_error] == ["no_output", "no_output"]  # retried once, per policy
    assert "produced no file" in page.image_error[-1]["message"] and page.image_error[-1]["node_id"] == "2"
    assert not page.image and s3.keys("pages/") == []


def test_a_bucket_that_is_down_holds_the_page_until_its_file_is_stored(
    alice: Any, simulator: Any, start_worker: Any, broker: Any, s3: S3Server
) -> None:
    """The worker's endpoint has no server behind it at first. The page renders, cannot be stored,
    and waits (Pending, no retry used); once a server answers there it is stored and Done, from
    the same render: ComfyUI ran the prompt once."""
    port = free_port()
    start_worker(COMFYUI_URLS=simulator.url, **{**s3.env(), "BOOKRENDER_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    book = book_create(owner=alice, title="Patience", style="model-free", pages=[PageSpec("wait for me")])
    page = book.pages.get()

    def waiting_for_storage() -> bool:
        current = BookPage.objects.get(pk=page.pk)
        note = current.job_metadata.get("deferred", {}).get("note", "")
        return current.status != Status.DONE and "file storage" in note

    wait_for(waiting_for_storage, timeout=90, message=lambda: page_state(page.pk))
    assert not BookPage.objects.get(pk=page.pk).image and simulator.stats()["submitted"] == 1

    # moto keeps its buckets per process: a second server on that port serves the same bucket.
    second = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    second.start()
    try:
        wait_for(
            lambda: BookPage.objects.get(pk=page.pk).status == Status.DONE,
            timeout=90,
            message=lambda: page_state(page.pk),
        )
    finally:
        second.stop()

    page.refresh_from_db()
    assert page.retry_count == 0 and page.image_error == []
    assert str(page.image.name) in s3.keys("pages/")
    assert simulator.stats()["submitted"] == 1  # fetched again, not rendered again


def test_the_client_uploads_to_the_input_folder_and_an_identical_upload_keeps_its_name(simulator: Any) -> None:
    from renders.comfy import ComfyClient

    client = ComfyClient(simulator.url, timeout=10, poll_interval=0.5)
    name = client.upload_image(png("red"), filename="bookrender-abc.png", subfolder="bookrender")
    assert name == "bookrender/bookrender-abc.png"
    assert (simulator.input_dir / "bookrender" / "bookrender-abc.png").read_bytes() == png("red")
    assert client.upload_image(png("red"), filename="bookrender-abc.png", subfolder="bookrender") == name


def test_history_outputs_are_read_under_every_media_key(simulator: Any) -> None:
    """SaveImage and the animated savers list "images"; video and custom nodes "video", "videos" or
    "gifs". "animated" and "text" beside them are not files."""
    from renders.comfy import ComfyClient

    client = ComfyClient(simulator.url, timeout=10, poll_interval=0.5)
    item = {
        "status": {"status_str": "success", "completed": True, "messages": []},
        "outputs": {
            "1": {"images": [{"filename": "a.webp", "subfolder": "x", "type": "output"}], "animated": [True]},
            "2": {"gifs": [{"filename": "b.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]},
            "3": {"video": [{"filename": "c.mp4", "subfolder": "", "type": "output"}]},
            "4": {"text": ["the prompt"]},
        },
    }
    entry = client._parse_history("p", item)
    assert [(o.node_id, o.filename) for o in entry.outputs] == [("1", "a.webp"), ("2", "b.mp4"), ("3", "c.mp4")]
    assert entry.images_of("4") == []


def test_a_template_declares_what_its_output_node_writes() -> None:
    from renders.workflows import WorkflowError, template_load, workflow_parse

    animated = template_load("model-free-animated")
    assert (animated.output_ext, animated.output_mime) == ("webp", "image/webp")
    still = template_load("model-free")
    assert (still.output_ext, still.output_mime) == ("png", "image/png")

    graph = {
        "1": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "{{FILENAME_PREFIX}}"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "{{PROMPT}}"}},
    }
    video = workflow_parse(json.dumps({"output_node": "1", "output_ext": "mp4", "prompt": graph}), slug="video")
    assert video.output_mime == "video/mp4"
    with pytest.raises(WorkflowError, match="'output_ext' must be one of png, jpg, webp, gif, mp4, webm"):
        workflow_parse(json.dumps({"output_node": "1", "output_ext": "avi", "prompt": graph}), slug="video")
    with pytest.raises(WorkflowError, match=r"'output_mime' of a \.mp4 output is video/mp4"):
        workflow_parse(
            json.dumps({"output_node": "1", "output_ext": "mp4", "output_mime": "image/png", "prompt": graph}), slug="v"
        )


def test_the_asset_placeholder_survives_the_fill_and_the_worker_replaces_it() -> None:
    from renders.assets import graph_needs_input, graph_with_input
    from renders.workflows import template_load

    filled = template_load("model-free-input").fill(
        prompt="p", negative_prompt="", seed=1, filename_prefix="bookrender/x"
    )
    assert filled["1"]["inputs"]["image"] == "{{INPUT_IMAGE}}" and graph_needs_input(filled)
    uploaded = graph_with_input(filled, "bookrender/bookrender-abc.png")
    assert uploaded["1"]["inputs"]["image"] == "bookrender/bookrender-abc.png" and not graph_needs_input(uploaded)
    assert filled["1"]["inputs"]["image"] == "{{INPUT_IMAGE}}"  # a copy: the template's graph is untouched
    assert not graph_needs_input(
        template_load("model-free").fill(prompt="p", negative_prompt="", seed=1, filename_prefix="x")
    )
