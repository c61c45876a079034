"""The machine health server against real things: the ComfyUI simulator, processes that look like
a starting ComfyUI, the local PostgreSQL and Redis, log files. Each test watches only the services
it names; the others on this machine (other people's workers) stay out of the picture."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dj_database_url
import pytest
import redis
import requests
from django.conf import settings

from comfysim.testing import running_simulator
from ops.devstack import free_port
from ops.healthserver import (
    SWEEP_KEY,
    HealthServer,
    Monitor,
    Service,
    celery_beat_service,
    celery_worker_service,
    comfyui_services,
    flower_service,
    postgresql_service,
    redis_service,
    web_service,
)

Get = Callable[[str], tuple[int, Any]]


@pytest.fixture
def serve() -> Iterator[Callable[..., Get]]:
    """Start a health server for some services: ``get = serve([service], grace_sec=30)``."""
    servers: list[HealthServer] = []

    def start(services: list[Service], grace_sec: float = 30.0, cache_sec: float = 0.0, **server: Any) -> Get:
        # No cache by default: these tests change things between requests and ask again at once.
        health = HealthServer(("127.0.0.1", 0), Monitor(services, grace_sec=grace_sec, cache_sec=cache_sec), **server)
        servers.append(health)
        threading.Thread(target=health.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{health.server_address[1]}"

        def get(path: str, **headers: str) -> tuple[int, Any]:
            response = requests.get(base + path, timeout=10, headers=headers)
            return response.status_code, response.json()

        return get

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def looks_like_comfyui() -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """A process whose command line is a ComfyUI's on `port`, that never listens."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-c", "import time; time.sleep(30)", "--port", str(port), "comfysim"]
        started.append(subprocess.Popen(argv))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def comfyui_on_its_port(tmp_path) -> Iterator[Any]:
    """A simulator on a port we chose, so that its command line says `--port <port>` like a ComfyUI's
    (the `simulator` fixture lets it pick a port itself: `--port 0`)."""
    with running_simulator(port=free_port(), output_dir=tmp_path / "comfy-output") as simulator:
        yield simulator


def comfyui(url: str) -> Service:
    [service] = comfyui_services([url])
    return service


def needs_postgresql() -> None:
    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        pytest.skip("the tests are not using PostgreSQL")


def test_it_follows_comfyui_from_healthy_to_stopped_and_back(comfyui_on_its_port, serve):
    simulator = comfyui_on_its_port
    service = comfyui(simulator.url)
    get = serve([service])

    status, body = get(f"/services/{service.name}/health")
    assert body["state"] == "healthy"
    assert "MB VRAM free" in body["detail"]
    assert body["pid"] == simulator.process.pid
    status, body = get("/ready")
    assert (status, body["ready"]) == (200, True)

    simulator.kill()
    assert get(f"/services/{service.name}/health")[1]["state"] == "stopped"
    status, body = get("/ready")
    assert status == 503
    detail = f"no process found and nothing listens on 127.0.0.1:{simulator.port}"
    assert body["not_ready"] == [{"name": service.name, "state": "stopped", "detail": detail}]
    assert get("/health")[1]["status"] == "unhealthy"

    simulator.restart()
    assert get(f"/services/{service.name}/health")[1]["state"] == "healthy"
    status, body = get("/ready")
    assert (status, body["ready"]) == (200, True)
    assert get("/health")[1]["status"] == "healthy"


def test_it_says_since_when_a_service_is_in_its_state(simulator, serve):
    service = comfyui(simulator.url)
    get = serve([service])
    first = get("/services")[1]["services"][0]["since"]
    time.sleep(0.05)
    assert get("/services")[1]["services"][0]["since"] == first
    simulator.kill()
    assert get("/services")[1]["services"][0]["since"] > first


def test_comfyui_without_main_py_in_its_folder_is_not_installed(settings, tmp_path, serve):
    settings.BOOKRENDER_COMFYUI_DIR = str(tmp_path / "ComfyUI")
    (tmp_path / "ComfyUI").mkdir()
    service = comfyui(f"http://127.0.0.1:{free_port()}")
    get = serve([service])

    body = get(f"/services/{service.name}/health")[1]
    assert body["state"] == "not_installed"
    assert str(tmp_path / "ComfyUI") in body["detail"]
    assert get("/ready")[0] == 503

    (tmp_path / "ComfyUI" / "main.py").write_text("")
    assert get(f"/services/{service.name}/health")[1]["state"] == "stopped"


def test_a_young_comfyui_process_that_does_not_answer_is_starting(looks_like_comfyui, serve):
    port = free_port()
    process = looks_like_comfyui(port)
    service = comfyui(f"http://127.0.0.1:{port}")
    time.sleep(0.2)  # let it exec

    body = serve([service], grace_sec=30)(f"/services/{service.name}/health")[1]
    assert (body["state"], body["pid"]) == ("starting", process.pid)
    assert "ConnectionError" in body["detail"] or "unavailable" in body["detail"].lower()

    body = serve([service], grace_sec=0)(f"/services/{service.name}/health")[1]
    assert body["state"] == "unhealthy"


def test_a_port_that_answers_errors_is_starting_then_unhealthy(serve):
    class Broken(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    listener = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        service = comfyui(f"http://127.0.0.1:{listener.server_address[1]}")
        get = serve([service])
        assert get(f"/services/{service.name}/health")[1]["state"] == "starting"
        assert get("/health")[1]["status"] == "degraded"
        assert get("/ready")[0] == 503
        assert serve([service], grace_sec=0)(f"/services/{service.name}/health")[1]["state"] == "unhealthy"
    finally:
        listener.shutdown()
        listener.server_close()


def test_sqlite_means_postgresql_is_not_configured_and_not_a_dependency(serve, tmp_path):
    sqlite = dj_database_url.parse(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    get = serve([postgresql_service(sqlite), redis_service(settings.REDIS_URL), web_service()])

    body = get("/services/postgresql/health")[1]
    assert (body["state"], body["detail"]) == ("not_configured", "DATABASE_URL is SQLite")
    web = get("/services/web/health")[1]
    assert [d["name"] for d in web["dependencies"]] == ["redis"]


def test_the_local_postgresql_and_redis_are_healthy(serve):
    needs_postgresql()
    get = serve([postgresql_service(settings.DATABASES["default"]), redis_service(settings.REDIS_URL)])
    assert get("/health")[1]["services"] == {"postgresql": "healthy", "redis": "healthy"}
    assert get("/ready")[0] == 200


def test_a_redis_nobody_runs_is_stopped(serve):
    get = serve([redis_service(f"redis://127.0.0.1:{free_port()}/0")])
    assert get("/services/redis/health")[1]["state"] == "stopped"


def test_each_service_lists_its_dependencies_with_their_states(simulator, serve):
    needs_postgresql()
    comfy = comfyui(simulator.url)
    worker = celery_worker_service(comfyui=[comfy.name])
    get = serve([comfy, redis_service(settings.REDIS_URL), postgresql_service(settings.DATABASES["default"]), worker])

    assert get("/services/celery-worker/health")[1]["dependencies"] == [
        {"name": "redis", "state": "healthy"},
        {"name": "postgresql", "state": "healthy"},
        {"name": comfy.name, "state": "healthy"},
    ]
    simulator.kill()
    deps = get("/services/celery-worker/health")[1]["dependencies"]
    assert {"name": comfy.name, "state": "stopped"} in deps


def test_beat_is_healthy_only_while_the_sweeper_runs(serve):
    client = redis.Redis.from_url(settings.REDIS_URL)
    # A process whose command line is a beat's: the probe, not the process, decides.
    beat = pretend("celery", "beat", REDIS_URL=settings.REDIS_URL, CELERY_BROKER_URL=settings.CELERY_BROKER_URL)
    try:
        time.sleep(0.2)
        client.set(SWEEP_KEY, time.time())
        get = serve([celery_beat_service()], grace_sec=0)
        assert get("/services/celery-beat/health")[1]["state"] == "healthy"

        client.set(SWEEP_KEY, time.time() - 120)
        body = get("/services/celery-beat/health")[1]
        assert body["state"] == "unhealthy"
        assert "120 s ago" in body["detail"]
    finally:
        client.delete(SWEEP_KEY)
        beat.kill()
        beat.wait()


def test_port_zero_leaves_web_and_flower_out_of_readiness(settings, serve):
    settings.BOOKRENDER_WEB_PORT = 0
    settings.BOOKRENDER_FLOWER_PORT = 0
    get = serve([web_service(), flower_service()])
    body = get("/health")[1]
    assert (body["status"], body["services"]) == ("healthy", {"web": "not_configured", "flower": "not_configured"})
    assert get("/ready")[0] == 200


def test_everything_down_is_stopped_and_not_ready(settings, serve):
    settings.BOOKRENDER_WEB_PORT = free_port()
    settings.BOOKRENDER_FLOWER_PORT = free_port()
    down = dj_database_url.parse(f"postgres://postgres@127.0.0.1:{free_port()}/nothing")
    get = serve(
        [
            *comfyui_services([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]),
            web_service(),
            flower_service(),
            redis_service(f"redis://127.0.0.1:{free_port()}/0"),
            postgresql_service(down),
        ]
    )
    status, body = get("/ready")
    assert status == 503
    assert {r["state"] for r in body["not_ready"]} == {"stopped"}


def test_logs_are_the_last_lines_of_the_service_log(settings, tmp_path, serve):
    settings.BOOKRENDER_LOG_DIR = str(tmp_path)
    # Lines of mixed lengths over several 64 KiB blocks: the tail is read backwards in blocks.
    (tmp_path / "web.log").write_text("".join(f"line {i} {'x' * (i % 300)}\n" for i in range(3000)))
    get = serve([web_service()])

    status, body = get("/services/web/logs?lines=5")
    assert status == 200
    assert body["source"] == str(tmp_path / "web.log")
    assert [line.split()[1] for line in body["lines"]] == ["2995", "2996", "2997", "2998", "2999"]
    assert len(get("/services/web/logs")[1]["lines"]) == 100

    status, body = get("/services/web/logs?lines=5000")
    assert status == 400
    assert "1000" in body["error"]
    assert get("/services/web/logs?lines=-1")[0] == 400


def test_logs_of_a_service_without_any_say_so(settings, tmp_path, monkeypatch, serve):
    settings.BOOKRENDER_LOG_DIR = str(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no journalctl
    status, body = serve([web_service()])("/services/web/logs")
    assert status == 404
    assert "web.log" in body["error"]


def test_unknown_services_and_paths_are_404_with_what_exists(serve):
    get = serve([redis_service(settings.REDIS_URL)])
    status, body = get("/services/redsi/health")
    assert (status, body["services"]) == (404, ["redis"])
    status, body = get("/metrics")
    assert status == 404
    assert "/ready" in body["paths"]


def pretend(*words: str, **env: str) -> subprocess.Popen[bytes]:
    """A process whose command line ends with `words`, with `env` as its whole environment."""
    argv = [sys.executable, "-c", "import time; time.sleep(30)", *words]
    return subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", **env})


def constant(name: str, probe: Callable[[], tuple[bool, str]]) -> Service:
    return Service(name=name, probe=probe, find_process=lambda processes: 1)


def test_it_answers_only_to_its_own_host_names(serve):
    get = serve([constant("one", lambda: (True, "fine"))])
    # DNS rebinding: a page on evil.example, whose name now resolves to 127.0.0.1.
    status, body = get("/health", Host="evil.example:9090")
    assert status == 400 and "evil.example" in body["error"]
    assert get("/health", Host="[::1")[0] == 400  # malformed: refused, not a crash
    assert get("/health", Host="localhost:9090")[0] == 200
    assert get("/health", Host="[::1]:9090")[0] == 200
    assert get("/health")[0] == 200  # 127.0.0.1:<port>


def test_with_a_token_every_request_needs_it(serve):
    get = serve([constant("one", lambda: (True, "fine"))], token="h3alth-t0ken")
    for path in ("/health", "/services", "/ready", "/services/one/logs"):
        assert get(path)[0] == 401, path
        assert get(path, Authorization="Bearer wrong")[0] == 401, path
    assert get("/health", Authorization="Bearer h3alth-t0ken")[0] == 200


def test_concurrent_requests_share_one_probe_round(serve):
    calls: list[float] = []

    def slow_probe() -> tuple[bool, str]:
        calls.append(time.monotonic())
        time.sleep(0.3)
        return True, "fine"

    get = serve([constant("slow", slow_probe)], cache_sec=2.0)
    threads = [threading.Thread(target=get, args=("/health",)) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_a_hung_probe_holds_one_thread_and_is_not_started_again(serve):
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> tuple[bool, str]:
        calls.append(1)
        release.wait(20)
        return True, "late"

    get = serve([constant("hangs", hangs)], grace_sec=0)
    try:
        assert "no answer within" in get("/services/hangs/health")[1]["detail"]
        for _ in range(5):
            body = get("/services/hangs/health")[1]
            assert body["state"] == "unhealthy" and "previous probe has not returned yet" in body["detail"]
        assert len(calls) == 1
    finally:
        release.set()


def test_with_two_stacks_on_the_host_it_reports_only_its_own_beat(serve):
    client = redis.Redis.from_url(settings.REDIS_URL)
    # The other stack's beat started first: the first `celery beat` in /proc is not ours.
    theirs = pretend("celery", "beat", REDIS_URL="redis://127.0.0.1:6379/9")
    ours = pretend("celery", "beat", REDIS_URL=settings.REDIS_URL, CELERY_BROKER_URL=settings.CELERY_BROKER_URL)
    try:
        client.set(SWEEP_KEY, time.time())
        get = serve([celery_beat_service()], grace_sec=0)
        body = get("/services/celery-beat/health")[1]
        assert (body["state"], body["pid"]) == ("healthy", ours.pid)

        ours.kill()
        ours.wait()
        body = get("/services/celery-beat/health")[1]
        assert (body["state"], body["pid"]) == ("stopped", None)
    finally:
        client.delete(SWEEP_KEY)
        for process in (theirs, ours):
            process.kill()
            process.wait()


def test_each_worker_answers_for_itself(tmp_path, serve, broker):
    from ops import livestack
    from tests.conftest import service_env

    dead = f"http://127.0.0.1:{free_port()}"
    # A render worker waits in its start-up gate for a ComfyUI that never answers, while the
    # maintenance worker, which never waits, answers ping.
    waiting = livestack.start_worker(
        env=service_env(COMFYUI_URLS=dead), log=tmp_path / "render.log", concurrency=1, wait=False
    )
    maintenance = livestack.start_maintenance_worker(env=service_env(COMFYUI_URLS=dead), log=tmp_path / "maint.log")
    try:
        get = serve([celery_worker_service(comfyui=[])], grace_sec=0)
        body = get("/services/celery-worker/health")[1]
        assert body["state"] == "unhealthy"
        assert f"(pid {maintenance.process.pid}) answers" in body["detail"]
        assert f"(pid {waiting.process.pid}) does not answer" in body["detail"]
    finally:
        waiting.stop()
        maintenance.stop()


def test_comfyui_is_named_by_the_gpu_index_of_its_record():
    services = comfyui_services(
        ["http://127.0.0.1:8288", "http://127.0.0.1:8189"], gpu_indexes={"http://127.0.0.1:8288": 3}
    )
    assert [s.name for s in services] == ["comfyui-3", "comfyui-1"]
    assert [s.unit for s in services] == ["comfyui@3", "comfyui@1"]
    # Without a record, a port far from 8188 + index is no GPU index: the position is used.
    assert [s.name for s in comfyui_services(["http://127.0.0.1:59813"])] == ["comfyui-0"]


def test_logs_of_a_unit_without_journal_entries_are_404_with_why(settings, tmp_path, monkeypatch, serve):
    settings.BOOKRENDER_LOG_DIR = str(tmp_path)
    journalctl = tmp_path / "journalctl"  # what journalctl prints for a unit it has nothing for
    journalctl.write_text("#!/bin/sh\necho '-- No entries --'\n")
    journalctl.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    status, body = serve([web_service()])("/services/web/logs")
    assert status == 404
    assert "web.log does not exist" in body["error"] and "no entries" in body["error"]


def test_a_real_comfyuis_logs_are_not_the_simulators(settings, tmp_path, monkeypatch, serve):
    settings.BOOKRENDER_LOG_DIR = str(tmp_path)
    (tmp_path / "simulator.log").write_text("a simulator line\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no journalctl
    port = free_port()
    real = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "main.py", "--port", str(port)])
    try:
        time.sleep(0.2)
        status, body = serve([comfyui(f"http://127.0.0.1:{port}")])(f"/services/comfyui-{port - 8188}/logs")
        assert status == 404 and "a simulator line" not in str(body)
    finally:
        real.kill()
        real.wait()


def test_served_log_lines_never_show_a_secret(settings, tmp_path, serve):
    settings.BOOKRENDER_LOG_DIR = str(tmp_path)
    (tmp_path / "web.log").write_text("connecting to postgres://bookrender:pg-s3cret@db/bookrender\n")
    body = serve([web_service()])("/services/web/logs")[1]
    assert body["lines"] == ["connecting to postgres://***@db/bookrender"]


def test_comfyui_is_not_installed_until_the_installer_recorded_an_install(settings, tmp_path, serve):
    settings.BOOKRENDER_COMFYUI_HOME = str(tmp_path / "home")
    service = comfyui(f"http://127.0.0.1:{free_port()}")
    get = serve([service])

    body = get(f"/services/{service.name}/health")[1]
    assert body["state"] == "not_installed"
    assert "python -m ops.comfyui install" in body["detail"]

    comfyui_dir = tmp_path / "home" / "installs" / "v1-abc" / "ComfyUI"
    comfyui_dir.mkdir(parents=True)
    (tmp_path / "home" / "install.json").write_text(json.dumps({"comfyui_dir": str(comfyui_dir)}))
    assert "which is missing" in get(f"/services/{service.name}/health")[1]["detail"]

    (comfyui_dir / "main.py").write_text("")
    assert get(f"/services/{service.name}/health")[1]["state"] == "stopped"
