"""`make run` (ops/devstack.py run) as a person starts it, with its own var and log folders: its logs,
the beat schedule and the simulator's files go there, and its health server serves those logs."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from ops.devstack import free_port
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_writes_where_bookrender_var_dir_and_log_dir_say(tmp_path, broker):
    var, logs = tmp_path / "var", tmp_path / "elsewhere" / "logs"
    web, flower, health = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        # Its own database: the demo book it seeds must not land in the tests' one.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "BOOKRENDER_VAR_DIR": str(var),
        "BOOKRENDER_LOG_DIR": str(logs),
        "BOOKRENDER_WEB_PORT": str(web),
        "BOOKRENDER_FLOWER_PORT": str(flower),
        "BOOKRENDER_HEALTH_PORT": str(health),
    }
    env.pop("COMFYUI_URLS", None)
    env.pop("BOOKRENDER_REQUIRE_POSTGRES", None)  # CI sets it; this stack's SQLite file is on purpose
    env["PYTHONUNBUFFERED"] = "1"  # every line as it is printed, so a slow start shows where it is
    stack = subprocess.Popen(
        [sys.executable, "-m", "ops.devstack", "run"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = _read_until(stack, "Ctrl-C stops everything", timeout=300)
        assert str(logs) in output
        for name in ("web.log", "worker.log", "beat.log", "simulator.log"):
            assert (logs / name).is_file(), name
        assert (var / "comfysim").is_dir()
        wait_for(lambda: list(var.glob("celerybeat-schedule*")), timeout=30)
        assert not list((ROOT / "var").glob("elsewhere*"))

        answer = requests.get(f"http://127.0.0.1:{health}/services/web/logs?lines=5", timeout=10).json()
        assert answer["source"] == str(logs / "web.log")
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()


def _read_until(process: subprocess.Popen[str], text: str, *, timeout: float) -> str:
    """The stack's output up to and including `text` (read from the pipe itself: a buffered
    readline would hide lines already read from the pipe from select, and wait forever)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"make run ended before saying {text!r}:\n{seen}")
        seen += chunk.decode(errors="replace")
        if text in seen:
            return seen
    raise AssertionError(f"make run did not say {text!r} within {timeout} s:\n{seen}")
