"""The small named world (alice owns a book, bob is another user, an admin is staff) and the real
services at the edges: the ComfyUI simulator on a real socket and real Celery worker processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from ops import livestack
from ops.livestack import Process

# The S3-compatible server (moto) and a bucket per test, for any test that asks for `s3`.
from tests.s3server import s3, s3_endpoint  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("BOOKRENDER_REQUIRE_POSTGRES") and "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        raise pytest.UsageError("BOOKRENDER_REQUIRE_POSTGRES is set but the tests are not using PostgreSQL")
    # The live tests own every worker on their broker: one of another stack (another `make test`,
    # a `make run`) would take their messages and answer their pings.
    from config.celery import app
    from ops.devstack import redis_answers

    if not redis_answers(settings.CELERY_BROKER_URL):
        return  # no broker: the tests that need one say so themselves
    strangers = sorted(name for reply in app.control.ping(timeout=1) or [] for name in reply)
    if strangers:
        raise pytest.UsageError(
            f"Celery workers already answer on the tests' broker {settings.CELERY_BROKER_URL}: "
            f"{', '.join(strangers)}. Stop them, or give this run a Redis database of its own (REDIS_URL)."
        )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """The production hasher spends most of a second per password, on purpose."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _local_cache(settings: Any) -> None:
    """Tests count rate limits in memory: clearing the Redis cache would empty the Celery queue."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def _own_media_root(settings: Any, tmp_path: Path) -> None:
    """Each test stores images in its own folder (workers it starts get the same one)."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _no_instances_from_earlier_tests(request: pytest.FixtureRequest) -> None:
    """A database test starts with no ComfyInstance rows. A live test's worker or beat can write
    one (its prober, its router) after that test's database was flushed; a later test would then
    route to, or check against, an instance that is not its own."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None and not {"db", "transactional_db"} & set(request.fixturenames):
        return
    transactional = (marker is not None and marker.kwargs.get("transaction")) or "transactional_db" in (
        request.fixturenames
    )
    request.getfixturevalue("transactional_db" if transactional else "db")
    from renders import services
    from renders.models import ComfyInstance

    ComfyInstance.objects.all().delete()
    services._slots_counted = (None, float("-inf"))  # nor this process's count of their slots


def attempt_history(page: Any) -> tuple[Any, ...]:
    """What an assertion about a page's attempts prints when it fails: who asked for each attempt
    (job_metadata), what went wrong, and where every attempt ran."""
    return (
        page.number,
        page.attempt,
        page.retry_count,
        page.image_error,
        page.job_metadata,
        list(page.attempts.values_list("number", "outcome", "instance_url")),
    )


def builtin_style(slug: str = "model-free") -> dict[str, Any]:
    """The style and workflow version fields of a Book made with ``Book.objects.create``: one of
    the built-in styles (seeded by migration, and again after every flush)."""
    from workflows.models import Style

    style = Style.objects.select_related("version").get(slug=slug)
    return {"style": style, "workflow_version": style.version}


@pytest.fixture
def alice(db: None) -> User:
    return User.objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob(db: None) -> User:
    return User.objects.create_user("bob", password="bob-password")


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_user("root", password="root-password", is_staff=True, is_superuser=True)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Any]:
    from comfysim.testing import running_simulator

    with running_simulator(output_dir=tmp_path / "comfy-output") as sim:
        yield sim


def database_url() -> str:
    """The URL of the database the tests use (pytest-django's test database), for subprocesses."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def service_env(**overrides: str) -> dict[str, str]:
    """Environment for a bookrender process that shares this test's database, media and Redis."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url(),
        BOOKRENDER_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start real render workers: ``start_worker(COMFYUI_URLS=sim.url, concurrency=2)``."""
    started: list[Process] = []

    def start(concurrency: int = 2, wait_ready: bool = True, **env: str) -> Process:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = livestack.start_worker(env=service_env(**env), log=log, concurrency=concurrency, wait=wait_ready)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start a real `celery beat` and the maintenance worker that runs what it schedules (the
    sweeper every BOOKRENDER_SWEEP_INTERVAL_SEC, and the prober), as the units do."""
    started: list[Process] = []

    def start(**env: str) -> Process:
        interval = float(env.pop("BOOKRENDER_SWEEP_INTERVAL_SEC", "1"))
        env_for_both = service_env(BOOKRENDER_SWEEP_INTERVAL_SEC=str(interval), **env)
        count = len(started)
        started.append(livestack.start_maintenance_worker(env=env_for_both, log=tmp_path / f"maintenance-{count}.log"))
        beat = livestack.start_beat(env=env_for_both, log=tmp_path / f"beat-{count}.log", sweep_interval=interval)
        started.append(beat)
        return beat

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def broker() -> Iterator[None]:
    """An empty Celery queue before and after the test (the test Redis database is flushed)."""
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        pytest.exit(
            "refusing to flush Redis database 0: run the tests with `make test`, "
            "or point REDIS_URL at a scratch database"
        )
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own as the Celery broker: no worker of another test, another stack
    or another `make test` on this host can answer its pings or take its messages."""
    from config.celery import app
    from ops.devstack import free_port, start_embedded_redis

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = start_embedded_redis(port, tmp_path / "own-redis")
    old = app.conf.broker_url
    app.conf.broker_url = url
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None
    try:
        yield url
    finally:
        process.kill()
        process.wait()
        app.conf.broker_url = old
        app._pool = None  # type: ignore[attr-defined]
        app.amqp._producer_pool = None


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "",
) -> Any:
    """Wait for ``condition`` to hold; ``message`` (or a function that writes it, called at the
    timeout, so it tells the state then and not at the start) explains a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"timed out after {timeout} s waiting for {condition}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def real_comfyui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real ComfyUI on CPU per test module, installed by ops/comfyui.py (tests/realcomfyui.py);
    skipped without BOOKRENDER_TEST_COMFYUI_SOURCE, failed without it under BOOKRENDER_REQUIRE_COMFYUI."""
    from tests.realcomfyui import running_comfyui

    with running_comfyui(tmp_path_factory.mktemp("comfyui")) as comfy:
        yield comfy
