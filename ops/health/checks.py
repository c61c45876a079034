"""The health checks. Each takes a Context and returns Results; ``run_checks`` runs the ones a
``--service`` filter selects, in a fixed order.

A check never raises: whatever goes wrong becomes a critical Result that says what. A reading
this machine cannot take (no NVIDIA driver, no ComfyUI data folder here) is "not available",
which is not a failure and does not change the exit code.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count
from django.utils import timezone

from books.models import BookPage
from config import env
from ops.health.inventory import Host, Instance, configured_instances, host_config
from ops.health.thresholds import (
    RepairPolicy,
    Thresholds,
    alert_webhook_url,
    repair_policy_from_env,
    thresholds_from_env,
)
from renders.comfy import ComfyClient, ComfyError
from renders.gpu import LOCAL_HOSTS, nvml_read


class Status(StrEnum):
    OK = "ok"
    UNAVAILABLE = "not available"
    WARNING = "warning"
    CRITICAL = "critical"


# Exit codes: 0 ok, 1 warning, 2 critical. "Not available" is not a problem.
SEVERITY = {Status.OK: 0, Status.UNAVAILABLE: 0, Status.WARNING: 1, Status.CRITICAL: 2}


@dataclass(frozen=True)
class Result:
    service: str  # what it is about: comfyui@0, gpu0, system, disk, models, ports, redis, ...
    check: str  # which reading: http, vram, queue, temperature, memory, ...
    status: Status
    message: str
    value: float | None = None
    unit: str | None = None  # the systemd unit a restart would fix
    url: str | None = None  # the ComfyUI instance
    path: str | None = None  # the file or folder

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Context:
    thresholds: Thresholds
    repair_policy: RepairPolicy
    alert_url: str
    instances: list[Instance]
    host: Host
    # An instance slower than this is down, not slow: twice the "slow" threshold.
    http_timeout: float
    # Idle workers answer a ping in milliseconds; a busy prefork worker's main process still does.
    ping_timeout: float = 2.0


def context_from_environment() -> Context:
    """Reads every BOOKRENDER_HEALTH_*, BOOKRENDER_REPAIR_* and BOOKRENDER_ALERT_* variable first,
    so that check_config knows them all."""
    thresholds = thresholds_from_env()
    return Context(
        thresholds=thresholds,
        repair_policy=repair_policy_from_env(),
        alert_url=alert_webhook_url(),
        instances=configured_instances(),
        host=host_config(),
        http_timeout=min(settings.COMFY_HTTP_TIMEOUT_SEC, thresholds.slow_sec * 2),
    )


def exit_code(results: Iterable[Result]) -> int:
    return max((SEVERITY[result.status] for result in results), default=0)


def _level(value: float, *, warn: float, crit: float, above: bool) -> Status:
    """Status of a reading against its thresholds; ``above`` means high values are bad."""
    if (value > crit) if above else (value < crit):
        return Status.CRITICAL
    if (value > warn) if above else (value < warn):
        return Status.WARNING
    return Status.OK


# --- configuration -----------------------------------------------------------------------------


def check_config(ctx: Context) -> list[Result]:
    """What would stop bookrender at start-up: malformed or unknown variables (renders.E001/E002)."""
    # dict.fromkeys: a variable read twice (settings, then here) is recorded twice; report it once.
    problems = dict.fromkeys(f"{e.name}={e.value!r}: {e.problem}" for e in env.ERRORS)
    results = [Result("config", text.split("=", 1)[0], Status.CRITICAL, text) for text in problems]
    results += [
        Result("config", name, Status.CRITICAL, f"{name} is not a bookrender setting: bookrender refuses to start")
        for name in env.unknown_variables()
    ]
    return results or [Result("config", "environment", Status.OK, "every variable is well-formed and known")]


# --- ComfyUI instances -------------------------------------------------------------------------


def check_instances(ctx: Context) -> list[Result]:
    results: list[Result] = []
    for instance in ctx.instances:
        results += _check_instance(ctx, instance)
    if not ctx.instances:
        results.append(Result("comfyui", "config", Status.CRITICAL, "no ComfyUI instance is configured"))
    return results


def _check_instance(ctx: Context, instance: Instance) -> list[Result]:
    name, url, unit = instance.name, instance.url, instance.unit
    client = ComfyClient(url, timeout=ctx.http_timeout)
    started = time.monotonic()
    try:
        stats = client.system_stats()
    except ComfyError as exc:
        return [Result(name, "http", Status.CRITICAL, f"{url} does not answer: {exc.message}", unit=unit, url=url)]
    elapsed = time.monotonic() - started
    slow = elapsed > ctx.thresholds.slow_sec
    results = [
        Result(
            name,
            "http",
            Status.WARNING if slow else Status.OK,
            f"{url} answered /system_stats in {elapsed:.2f} s"
            + (f", slower than {ctx.thresholds.slow_sec:g} s" if slow else "")
            + f" (ComfyUI {stats.comfyui_version or 'unknown version'})",
            value=round(elapsed, 3),
            unit=unit,
            url=url,
        )
    ]
    device = stats.gpu
    if device is None or device.type == "cpu":
        results.append(Result(name, "vram", Status.UNAVAILABLE, "ComfyUI reports no GPU", url=url))
    else:
        limits = ctx.thresholds
        status = _level(device.vram_free_mb, warn=limits.vram_warn_mb, crit=limits.vram_crit_mb, above=False)
        results.append(
            Result(
                name,
                "vram",
                status,
                f"{device.vram_free_mb} MB free of {device.vram_total_mb} MB on {device.name}"
                + (
                    ""
                    if status is Status.OK
                    else f" (warning below {limits.vram_warn_mb}, critical below {limits.vram_crit_mb})"
                ),
                value=device.vram_free_mb,
                url=url,
            )
        )
    try:
        queue = client.queue()
    except ComfyError as exc:
        results.append(Result(name, "queue", Status.CRITICAL, f"GET /queue failed: {exc.message}", unit=unit, url=url))
        return results
    depth = len(queue.running) + len(queue.pending)
    over = depth > ctx.thresholds.queue_warn
    results.append(
        Result(
            name,
            "queue",
            Status.WARNING if over else Status.OK,
            f"{len(queue.running)} running, {len(queue.pending)} waiting"
            + (f" (more than {ctx.thresholds.queue_warn})" if over else ""),
            value=depth,
            url=url,
        )
    )
    return results


# --- GPUs (NVML, on this host) -------------------------------------------------------------------


def check_gpus(ctx: Context) -> list[Result]:
    indexes = sorted({*(ctx.host.gpus or []), *(i.gpu_index for i in ctx.instances if i.gpu_index is not None)})
    if not indexes:
        return [Result("gpu", "nvml", Status.UNAVAILABLE, "no ComfyUI instance on this host")]
    results = []
    limits = ctx.thresholds
    for index in indexes:
        reading = nvml_read(index)
        if reading is None:
            message = f"GPU {index}: NVML not available (no NVIDIA driver, or no GPU {index})"
            results.append(Result(f"gpu{index}", "nvml", Status.UNAVAILABLE, message))
            continue
        summary = f"{reading.name}: {reading.vram_used_mb} of {reading.vram_total_mb} MB used" + (
            f", {reading.utilization_pct} % busy" if reading.utilization_pct is not None else ""
        )
        if reading.temperature_c is None:
            results.append(Result(f"gpu{index}", "temperature", Status.OK, f"{summary}; no temperature sensor"))
            continue
        status = _level(reading.temperature_c, warn=limits.gpu_temp_warn_c, crit=limits.gpu_temp_crit_c, above=True)
        results.append(
            Result(
                f"gpu{index}",
                "temperature",
                status,
                f"{summary}, {reading.temperature_c} °C"
                + ("" if status is Status.OK else f" (warning above {limits.gpu_temp_warn_c} °C)"),
                value=reading.temperature_c,
            )
        )
    return results


# --- CPU, memory, disks --------------------------------------------------------------------------


def check_system(ctx: Context) -> list[Result]:
    results = []
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] / cpus
    high = load > ctx.thresholds.load_warn
    results.append(
        Result(
            "system",
            "cpu",
            Status.WARNING if high else Status.OK,
            f"load {load:.2f} per CPU over the last minute ({cpus} CPUs)"
            + (f", above {ctx.thresholds.load_warn:g}" if high else ""),
            value=round(load, 2),
        )
    )
    try:
        meminfo = _meminfo()
    except (OSError, KeyError, ValueError):
        results.append(Result("system", "memory", Status.UNAVAILABLE, "/proc/meminfo cannot be read"))
        return results
    used_pct = 100.0 * (1 - meminfo["MemAvailable"] / meminfo["MemTotal"])
    status = _level(used_pct, warn=ctx.thresholds.memory_warn_pct, crit=ctx.thresholds.memory_crit_pct, above=True)
    results.append(
        Result(
            "system",
            "memory",
            status,
            f"{used_pct:.0f} % of {meminfo['MemTotal'] // 1024} MB in use"
            + ("" if status is Status.OK else f" (warning above {ctx.thresholds.memory_warn_pct:g} %)"),
            value=round(used_pct, 1),
        )
    )
    return results


def _meminfo() -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])  # kB
    return {"MemTotal": values["MemTotal"], "MemAvailable": values["MemAvailable"]}


def check_disks(ctx: Context) -> list[Result]:
    storages: list[tuple[str, Path | None, str]] = [
        ("models", ctx.host.models_dir, "model storage (CUI_MODELS_DIR)"),
        ("media", Path(settings.MEDIA_ROOT), "bookrender's page images (BOOKRENDER_MEDIA_ROOT)"),
        ("comfyui-data", ctx.host.data_dir, "ComfyUI's outputs and temp files (CUI_DATA_DIR)"),
    ]
    results = []
    for check, path, what in storages:
        if path is None:
            results.append(Result("disk", check, Status.UNAVAILABLE, f"{what} is not configured"))
            continue
        if not path.exists() and check != "media" and not ctx.host.managed:
            results.append(
                Result("disk", check, Status.UNAVAILABLE, f"{path} does not exist on this host", path=str(path))
            )
            continue
        # A folder not created yet lives on its parent's file system.
        existing = next(p for p in (path, *path.parents) if p.exists())
        usage = os.statvfs(existing)
        free_pct = 100.0 * usage.f_bavail / usage.f_blocks if usage.f_blocks else 0.0
        free_gb = usage.f_bavail * usage.f_frsize / 1024**3
        limits = ctx.thresholds
        status = _level(free_pct, warn=limits.disk_free_warn_pct, crit=limits.disk_free_crit_pct, above=False)
        results.append(
            Result(
                "disk",
                check,
                status,
                f"{what}: {free_pct:.0f} % free ({free_gb:.1f} GB) on {existing}"
                + ("" if status is Status.OK else f" (critical below {limits.disk_free_crit_pct:g} %)"),
                value=round(free_pct, 1),
                path=str(path),
            )
        )
    return results


# --- models --------------------------------------------------------------------------------------

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def broken_model_links(host: Host) -> list[Path]:
    """Symbolic links in ComfyUI's models/ folder whose target is gone."""
    folder = host.data_dir / "models"
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir() if entry.is_symlink() and not entry.exists())


def check_models(ctx: Context) -> list[Result]:
    store = ctx.host.models_dir
    if store is None:
        return [Result("models", "storage", Status.UNAVAILABLE, "CUI_MODELS_DIR is not set (no /etc/default/comfyui)")]
    if not store.is_dir():
        return [Result("models", "storage", Status.CRITICAL, f"model storage {store} is missing", path=str(store))]
    if not os.access(store, os.R_OK | os.X_OK):
        return [Result("models", "storage", Status.CRITICAL, f"model storage {store} is not readable", path=str(store))]
    kinds = sorted(entry.name for entry in store.iterdir() if entry.is_dir())
    results = [
        Result("models", "storage", Status.OK, f"{store} is readable: {', '.join(kinds) or 'empty'}", path=str(store))
    ]
    broken = broken_model_links(ctx.host)
    for link in broken:
        message = f"{link} points to {os.readlink(link)}, which does not exist"
        results.append(Result("models", "link", Status.CRITICAL, message, path=str(link)))
    if not broken and (ctx.host.data_dir / "models").is_dir():
        results.append(Result("models", "link", Status.OK, f"every link in {ctx.host.data_dir / 'models'} resolves"))
    for slug, name in _workflow_models():
        if not _model_present(name, [store, ctx.host.data_dir / "models"]):
            message = f"workflow {slug!r} needs {name}, which is not in {store}"
            results.append(Result("models", "workflow", Status.WARNING, message, path=name))
    return results


def _workflow_models() -> list[tuple[str, str]]:
    from workflows.services import graphs_in_use

    needed = []
    for slug, graph in graphs_in_use():
        for node in graph.values():
            for value in node.get("inputs", {}).values():
                if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                    needed.append((slug, value))
    return needed


def _model_present(name: str, roots: list[Path]) -> bool:
    # ComfyUI names a model relative to its kind's folder (checkpoints/, loras/, ...).
    for root in roots:
        if root.is_dir() and any((kind / name).is_file() for kind in root.iterdir() if kind.is_dir()):
            return True
    return False


# --- ports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedPort:
    port: int
    service: str
    commands: tuple[str, ...]  # one of these appears in the right process's command line
    user: str  # the service user on a host set up by ops/install.sh
    required: bool  # report a port nobody listens on (otherwise another check already does)


def expected_ports(ctx: Context) -> list[ExpectedPort]:
    ports = [
        ExpectedPort(settings.BOOKRENDER_WEB_PORT, "web", ("gunicorn", "runserver"), "bookrender", False),
        ExpectedPort(settings.BOOKRENDER_FLOWER_PORT, "flower", ("flower",), "bookrender", True),
    ]
    for instance in ctx.instances:
        port = urlsplit(instance.url).port
        if instance.gpu_index is not None and port is not None:
            ports.append(ExpectedPort(port, instance.name, ("main.py", "comfysim"), "comfyui", False))
    redis_url = urlsplit(settings.REDIS_URL)
    if redis_url.hostname in LOCAL_HOSTS:
        ports.append(ExpectedPort(redis_url.port or 6379, "redis", ("redis-server",), "redis", False))
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"] and (db.get("HOST") or "localhost") in LOCAL_HOSTS:
        ports.append(ExpectedPort(int(db.get("PORT") or 5432), "postgresql", ("postgres",), "postgres", False))
    return ports


def check_ports(ctx: Context) -> list[Result]:
    listeners = listening_sockets()
    expected = expected_ports(ctx)
    commands = _commands_of({inode for port in expected for _, inode in listeners.get(port.port, [])})
    results = []
    for want in expected:
        label = f"{want.service} :{want.port}"
        if want.port not in listeners:
            if want.required:
                results.append(Result("ports", label, Status.CRITICAL, f"nothing listens on port {want.port}"))
            continue
        uid, inode = listeners[want.port][0]
        user = _user_name(uid)
        command = commands.get(inode)
        holder = f"pid {command[0]} ({_short(command[1])})" if command else "a process this user cannot see"
        problem = ""
        if _user_exists(want.user) and user != want.user:
            problem = f", expected user {want.user}"
        elif command and not any(word in command[1] for word in want.commands):
            problem = f", expected {' or '.join(want.commands)}"
        results.append(
            Result(
                "ports",
                label,
                Status.WARNING if problem else Status.OK,
                f"port {want.port} is held by {holder} as {user}{problem}",
                value=want.port,
            )
        )
    return results


def listening_sockets() -> dict[int, list[tuple[int, int]]]:
    """TCP ports in LISTEN state on this host: port -> [(owner uid, socket inode)]. Read from
    /proc/net/tcp{,6}, which shows every user's sockets without privileges."""
    found: dict[int, list[tuple[int, int]]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            found.setdefault(port, []).append((int(fields[7]), int(fields[9])))
    return found


def _commands_of(inodes: set[int]) -> dict[int, tuple[int, str]]:
    """socket inode -> (pid, command line) for the processes this user may inspect."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, tuple[int, str]] = {}
    if not wanted:
        return found
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target in wanted:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.setdefault(wanted[target], (int(pid), cmdline.strip()))
        except OSError:  # gone, or another user's process
            continue
    return found


def _short(command: str, limit: int = 60) -> str:
    """A command line for a report: the program's name without its folder, at most ``limit``."""
    program, _, rest = command.partition(" ")
    text = f"{Path(program).name} {rest}".strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --- the web app ---------------------------------------------------------------------------------


def check_web(ctx: Context) -> list[Result]:
    """/healthz: the web app answers and reaches its database."""
    url = f"http://127.0.0.1:{settings.BOOKRENDER_WEB_PORT}/healthz"
    started = time.monotonic()
    try:
        response = requests.get(url, timeout=ctx.http_timeout)
    except requests.RequestException as exc:
        return [Result("web", "healthz", Status.CRITICAL, f"{url} does not answer: {type(exc).__name__}")]
    elapsed = time.monotonic() - started
    if response.status_code != 200:
        message = f"{url} answered {response.status_code}: {response.text.strip()[:200]}"
        return [Result("web", "healthz", Status.CRITICAL, message)]
    slow = elapsed > ctx.thresholds.slow_sec
    message = f"{url} answered in {elapsed * 1000:.0f} ms" + (
        f", slower than {ctx.thresholds.slow_sec:g} s" if slow else ""
    )
    return [Result("web", "healthz", Status.WARNING if slow else Status.OK, message, value=round(elapsed, 3))]


# --- Redis, the database, Celery, pages ----------------------------------------------------------


def check_redis(ctx: Context) -> list[Result]:
    url = settings.CELERY_BROKER_URL
    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    started = time.monotonic()
    try:
        client.ping()
        waiting = int(client.llen("celery"))  # type: ignore[arg-type]  # redis-py's sync client returns int
    except (redis.RedisError, OSError) as exc:
        return [Result("redis", "ping", Status.CRITICAL, f"{_safe(url)} does not answer: {exc}")]
    elapsed = time.monotonic() - started
    message = f"{_safe(url)} answered in {elapsed * 1000:.0f} ms; {waiting} messages wait in the celery queue"
    return [Result("redis", "ping", Status.OK, message, value=waiting)]


def check_database(ctx: Context) -> list[Result]:
    db = settings.DATABASES["default"]
    where = f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
    if connection.vendor == "sqlite":
        where = str(db["NAME"])
    started = time.monotonic()
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return [Result("database", "query", Status.CRITICAL, f"{connection.vendor} at {where} refused: {exc}")]
    elapsed = time.monotonic() - started
    slow = elapsed > ctx.thresholds.slow_sec
    message = f"{connection.vendor} at {where} answered in {elapsed * 1000:.0f} ms"
    return [Result("database", "query", Status.WARNING if slow else Status.OK, message, value=round(elapsed, 3))]


def check_workers(ctx: Context) -> list[Result]:
    from config.celery import app

    try:
        replies = app.control.ping(timeout=ctx.ping_timeout)
    except Exception as exc:  # kombu raises OperationalError, redis errors, socket errors...
        return [Result("celery", "ping", Status.CRITICAL, f"cannot ask the workers: {type(exc).__name__}: {exc}")]
    names = sorted(name for reply in replies or [] for name in reply)
    if ctx.host.gpus:
        # On a host set up by ops/install.sh every GPU has its worker, named worker<N>@<host>.
        results = []
        for index in ctx.host.gpus:
            unit = f"bookrender-worker@{index}.service"
            mine = [name for name in names if name.startswith(f"worker{index}@")]
            if mine:
                results.append(Result(f"worker{index}", "ping", Status.OK, f"{mine[0]} answered", unit=unit))
            else:
                message = f"no worker{index}@ answered a ping within {ctx.ping_timeout:g} s"
                results.append(Result(f"worker{index}", "ping", Status.CRITICAL, message, unit=unit))
        return results
    if not names:
        message = f"no Celery worker answered a ping within {ctx.ping_timeout:g} s"
        return [Result("celery", "ping", Status.CRITICAL, message)]
    return [Result("celery", "ping", Status.OK, f"{len(names)} answered: {', '.join(names)}", value=len(names))]


@dataclass(frozen=True)
class StuckPages:
    lapsed: int  # rendering, but the lease lapsed long ago: its worker died and nobody resumed it
    overdue: int  # queued and due long ago, and no worker took it

    @property
    def total(self) -> int:
        return self.lapsed + self.overdue


def stuck_pages(*, older_than_sec: float) -> StuckPages:
    """Pages the sweeper (Celery beat, every few seconds) should have moved long ago."""
    cutoff = timezone.now() - timedelta(seconds=older_than_sec)
    status = BookPage.Status
    return StuckPages(
        lapsed=BookPage.objects.filter(status=status.RENDERING, lease_expires_at__lt=cutoff).count(),
        overdue=BookPage.objects.filter(status=status.QUEUED, next_attempt_at__lt=cutoff).count(),
    )


def check_pages(ctx: Context) -> list[Result]:
    try:
        stuck = stuck_pages(older_than_sec=ctx.thresholds.stuck_page_sec)
        counts = _status_counts()
    except DatabaseError as exc:
        return [Result("pages", "stuck", Status.CRITICAL, f"cannot read pages: {exc}")]
    summary = f"{counts.get('queued', 0)} queued, {counts.get('rendering', 0)} rendering"
    if stuck.total == 0:
        return [Result("pages", "stuck", Status.OK, f"{summary}; none stuck", value=0)]
    minutes = ctx.thresholds.stuck_page_sec / 60
    message = (
        f"{summary}; stuck for over {minutes:g} min: {stuck.lapsed} rendering without a worker, "
        f"{stuck.overdue} queued and not taken (is celery beat running?)"
    )
    return [Result("pages", "stuck", Status.WARNING, message, value=stuck.total)]


def _status_counts() -> dict[str, int]:
    rows = BookPage.objects.values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(parts.password, "***") if parts.password else url


# --- running them --------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Context], list[Result]]] = {
    "config": check_config,
    "comfyui": check_instances,
    "web": check_web,
    "gpu": check_gpus,
    "system": check_system,
    "disk": check_disks,
    "models": check_models,
    "ports": check_ports,
    "redis": check_redis,
    "database": check_database,
    "celery": check_workers,
    "pages": check_pages,
}
ALIASES = {"postgresql": "database", "postgres": "database", "worker": "celery", "workers": "celery"}


def check_family(service: str) -> str | None:
    """The check that reports on ``service``: comfyui@1 -> comfyui, gpu0 -> gpu, worker0 -> celery."""
    name = ALIASES.get(service, service)
    if name in CHECKS:
        return name
    base = re.sub(r"(@.*|\d+)$", "", name)
    return ALIASES.get(base, base) if ALIASES.get(base, base) in CHECKS else None


def run_checks(ctx: Context, services: list[str] | None = None) -> list[Result]:
    """Every check, or those that report on ``services``: a family name (comfyui, gpu, ...) keeps
    all its results, an instance name (comfyui@1, gpu0, worker0) only that one's."""
    results = []
    for family, check in CHECKS.items():
        wanted = [service for service in services or [] if check_family(service) == family]
        if services and not wanted:
            continue
        for result in _run_one(check, ctx):
            if not wanted or any(ALIASES.get(s, s) == family or s == result.service for s in wanted):
                results.append(result)
    return results


def _run_one(check: Callable[[Context], list[Result]], ctx: Context) -> list[Result]:
    try:
        return check(ctx)
    except Exception as exc:  # a check with a bug must not hide the others' results
        name = check.__name__.removeprefix("check_")
        return [Result(name, "error", Status.CRITICAL, f"the check itself failed: {type(exc).__name__}: {exc}")]
