"""The issue-15 topology, live: a web host and two GPU hosts that share no disk, only PostgreSQL,
Redis and an S3-compatible bucket (moto's server). Each host has its own var folder (media, logs,
beat schedule) and each GPU host its own ComfyUI (a simulator). A book whose pages start from
input images renders, a page is regenerated through the web app, the ZIP is downloaded through
it, and no page file is ever written to any host's disk."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.files.storage import default_storage
from django.test import Client
from PIL import Image

from books.inputs import input_image_store
from books.models import BookPage
from books.services import PageSpec, book_create
from ops import livestack, topology
from ops.devstack import free_port, wait_http
from renders.models import RenderAttempt
from tests.conftest import service_env, wait_for
from tests.renders.test_crashes import report
from tests.s3server import S3Server

Status = BookPage.Status
COLOURS = ["red", "green", "blue", "yellow"]


def host_env(root: Path, s3: S3Server, **extra: str) -> dict[str, str]:
    """One host's environment: its own var folder; the database, Redis and bucket are shared."""
    var = root / "var"
    return service_env(
        BOOKRENDER_VAR_DIR=str(var),
        BOOKRENDER_MEDIA_ROOT=str(var / "media"),
        BOOKRENDER_LOG_DIR=str(var / "logs"),
        **s3.env(),
        **extra,
    )


def files_written(root: Path) -> list[Path]:
    """Page files (any image or video) anywhere under a host's var folder."""
    kinds = {".png", ".jpg", ".webp", ".gif", ".mp4", ".webm", ".zip", ".pdf"}
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in kinds]


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), colour).save(out, "PNG")
    return out.getvalue()


def signed_in(user: Any, base_url: str) -> requests.Session:
    """A browser session of ``user`` on the web host (a session row in the shared database)."""
    client = Client()
    client.force_login(user)
    session = requests.Session()
    session.cookies.set("sessionid", client.cookies["sessionid"].value)
    session.get(base_url + "/books/", timeout=10).raise_for_status()  # sets the CSRF cookie
    return session


@pytest.mark.timeout(600)
@pytest.mark.django_db(transaction=True)
def test_a_web_host_and_two_gpu_hosts_share_only_the_database_redis_and_the_bucket(
    alice: Any, broker: Any, s3: S3Server, tmp_path: Path
) -> None:
    from comfysim.testing import running_simulator

    web_root, gpu1_root, gpu2_root = tmp_path / "web", tmp_path / "gpu1", tmp_path / "gpu2"
    with (
        running_simulator(output_dir=gpu1_root / "comfyui" / "output") as sim1,
        running_simulator(output_dir=gpu2_root / "comfyui" / "output") as sim2,
    ):
        fleet = f"{sim1.url},{sim2.url}"
        processes: list[livestack.Process] = []
        try:
            for number, (root, sim) in enumerate(((gpu1_root, sim1), (gpu2_root, sim2)), start=1):
                (root / "var" / "logs").mkdir(parents=True)
                env = host_env(root, s3, COMFYUI_URLS=fleet, BOOKRENDER_WORKER_INSTANCES=sim.url)
                processes.append(
                    livestack.start_worker(
                        env=env, log=root / "var" / "logs" / "worker.log", concurrency=2, hostname=f"gpu{number}@%h"
                    )
                )
            (web_root / "var" / "logs").mkdir(parents=True)
            port = free_port()
            web = livestack.Process(
                "web",
                topology.argv("web", bind=f"127.0.0.1:{port}", log_level="INFO"),
                host_env(
                    web_root, s3, COMFYUI_URLS=fleet, GUNICORN_CMD_ARGS="--workers 1 --threads 4 --worker-class gthread"
                ),
                web_root / "var" / "logs" / "web.log",
            )
            processes.append(web)
            base_url = f"http://127.0.0.1:{port}"
            assert wait_http(base_url + "/accounts/login/", 60), web.log()[-3000:]

            # The pages' input images go to the bucket as the web app's form stores them.
            inputs = [input_image_store(png(colour)) for colour in COLOURS]
            book = book_create(
                owner=alice,
                title="Two hosts",
                style="model-free-input",
                pages=[
                    PageSpec(f"page {n} in {colour}", input_image=name, overrides={"width": 128, "height": 128})
                    for n, (colour, name) in enumerate(zip(COLOURS, inputs, strict=True), start=1)
                ],
            )
            wait_for(
                lambda: book.pages.filter(status=Status.DONE).count() == len(COLOURS),
                timeout=120,
                message=lambda: str(list(book.pages.values_list("number", "status", "image_error"))),
            )

            session = signed_in(alice, base_url)
            status_page = session.get(f"{base_url}/books/{book.pk}/", timeout=10)
            assert status_page.status_code == 200 and "Input image of page 4" in status_page.text
            # A page image: the web app checks the owner, then sends the browser to the bucket.
            shown = session.get(f"{base_url}/books/{book.pk}/pages/2/image?v=1", timeout=10, allow_redirects=False)
            assert shown.status_code == 302 and shown.headers["Location"].startswith(s3.endpoint)
            with Image.open(io.BytesIO(requests.get(shown.headers["Location"], timeout=10).content)) as image:
                r, g, b = image.convert("RGB").getpixel((64, 64))
                assert g > 100 and r < 100 and b < 100  # page 2 started from the green picture

            first = str(BookPage.objects.get(book=book, number=1).image.name)
            regenerate = session.post(
                f"{base_url}/books/{book.pk}/regenerate",
                data={"page": "1", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
                headers={"Referer": base_url + f"/books/{book.pk}/"},
                timeout=10,
            )
            assert regenerate.status_code == 200, regenerate.text[:500]
            wait_for(lambda: BookPage.objects.get(book=book, number=1).image_attempt == 2, timeout=120)
            regenerated = BookPage.objects.get(book=book, number=1)
            assert regenerated.status == Status.DONE and str(regenerated.image.name) != first

            download = session.get(f"{base_url}/books/{book.pk}/download.zip", timeout=30)
            assert download.status_code == 200
            archive = zipfile.ZipFile(io.BytesIO(download.content))
            assert archive.namelist() == [f"page-00{n}.png" for n in range(1, 5)]
            with default_storage.open(str(regenerated.image.name), "rb") as stored:
                assert archive.read("page-001.png") == stored.read()

            # Every file is in the bucket; no host wrote one to its own disk.
            assert len(s3.keys("pages/")) == 5 and sorted(s3.keys("inputs/")) == sorted(inputs)
            for root in (web_root, gpu1_root / "var", gpu2_root / "var", tmp_path / "media"):
                assert files_written(root) == [], root
            by_instance = Counter(RenderAttempt.objects.filter(page__book=book).values_list("instance_url", flat=True))
            report(
                "two-hosts",
                pages=len(COLOURS),
                attempts_by_instance={("gpu1" if url == sim1.url else "gpu2"): n for url, n in by_instance.items()},
                objects_in_the_bucket=len(s3.keys()),
                page_files_on_local_disks=0,
            )
        finally:
            for process in processes:
                process.stop()
