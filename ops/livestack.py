"""A live bookrender system for the benchmarks, the fault suite and the load test: real worker
and beat processes, ComfyUI simulators on real sockets, and the database and Redis that
``python -m ops.devstack`` provides through DATABASE_URL and REDIS_URL.

Used from a process where Django is set up with ``setup_django()``; books are created through
the same service functions the web app calls.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ops import topology

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def reset_database() -> None:
    """Empty every table and the Celery queues: each scenario starts from nothing."""
    from django.core.management import call_command

    from config.celery import app

    call_command("flush", verbosity=0, interactive=False)
    with app.connection_for_write() as connection:
        client: Any = connection.default_channel.client  # type: ignore[attr-defined]
        client.delete("celery", "maintenance")


def use_instances(urls: list[str]) -> dict[str, str]:
    """Point this process (it publishes and routes) and the processes it starts at these ComfyUIs."""
    from django.conf import settings

    os.environ["COMFYUI_URLS"] = ",".join(urls)
    settings.COMFYUI_URLS = urls
    return {"COMFYUI_URLS": ",".join(urls)}


class Process:
    """A child process in its own process group, so a SIGKILL takes its children with it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log_path = name, log
        self.hostname = ""  # a Celery worker's node name, as its pings answer
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                argv, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    *, env: dict[str, str], log: Path, concurrency: int, wait: bool = True, hostname: str | None = None
) -> Process:
    """A render worker, as bookrender-worker@.service runs it: the render queue only, its pool
    size from CELERY_WORKER_CONCURRENCY."""
    name = hostname or f"live-{time.monotonic_ns()}@%h"
    argv = topology.argv("render-worker", log_level="INFO", hostname=name)
    worker = Process("worker", argv, {**env, "CELERY_WORKER_CONCURRENCY": str(concurrency)}, log)
    worker.hostname = name.replace("%h", socket.gethostname())
    if wait:
        wait_ready(worker)
    return worker


def start_maintenance_worker(
    *, env: dict[str, str], log: Path, wait: bool = True, hostname: str | None = None
) -> Process:
    """The maintenance worker, as bookrender-maintenance.service runs it: the sweeper and the
    prober, one process."""
    name = hostname or f"live-maintenance-{time.monotonic_ns()}@%h"
    worker = Process("maintenance", topology.argv("maintenance-worker", log_level="INFO", hostname=name), env, log)
    worker.hostname = name.replace("%h", socket.gethostname())
    if wait:
        wait_ready(worker)
    return worker


def wait_ready(worker: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "ready." not in worker.log():
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the {worker.name} did not start:\n{worker.log()[-3000:]}")
        time.sleep(0.1)


def start_beat(*, env: dict[str, str], log: Path, sweep_interval: float = 1.0) -> Process:
    argv = topology.argv("beat", log_level="INFO", schedule=str(log.with_suffix(".schedule")))
    return Process("beat", argv, {"BOOKRENDER_SWEEP_INTERVAL_SEC": str(sweep_interval), **env}, log)


@contextmanager
def simulators(count: int, *, workdir: Path, args: list[str] = ()) -> Iterator[list[Any]]:  # type: ignore[assignment]
    from comfysim.testing import running_simulator

    with ExitStack() as stack:
        yield [
            stack.enter_context(running_simulator(output_dir=workdir / f"sim{n}", args=list(args)))
            for n in range(count)
        ]


def create_book(
    pages: int, *, title: str, size: int = 256, prompts: list[str] | None = None, style: str = "model-free"
) -> Any:
    """A book of ``pages`` pages, queued through the same service the web app uses."""
    from django.contrib.auth.models import User

    from books.services import PageSpec, book_create

    owner, _ = User.objects.get_or_create(username="live")
    texts = prompts or [f"page {n}" for n in range(1, pages + 1)]
    # Small pages by default: the simulator's own pixel work would otherwise count as render time.
    specs = [PageSpec(text, overrides={"width": size, "height": size}) for text in texts]
    return book_create(owner=owner, title=title, style=style, pages=specs)


def wait_settled(book: Any, *, timeout: float, interval: float = 0.05) -> bool:
    """Wait until every page is Done or Needs attention; False on timeout."""
    from books.models import BookPage

    deadline = time.monotonic() + timeout
    active = (BookPage.Status.QUEUED, BookPage.Status.RENDERING)
    while book.pages.filter(status__in=active).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
