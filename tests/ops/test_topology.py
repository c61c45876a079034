"""The topology we test is the one we ship: the systemd units and compose run exactly the command
lines of ops/topology.py, which `make run` and every live stack start."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ops import livestack, topology

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "ops" / "services"
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

# What each unit fills the placeholders with.
UNIT_VALUES = {
    "web": {"bind": "127.0.0.1:${BOOKRENDER_WEB_PORT}", "log_level": "${BOOKRENDER_LOG_LEVEL}"},
    # Inside the worker's `sh -c`, $$ leaves the expansion to sh.
    "render-worker": {"log_level": "$${BOOKRENDER_LOG_LEVEL}", "hostname": "worker%i@%H"},
    "maintenance-worker": {"log_level": "${BOOKRENDER_LOG_LEVEL}", "hostname": "maintenance@%H"},
    "beat": {"log_level": "${BOOKRENDER_LOG_LEVEL}", "schedule": "/var/lib/bookrender/celerybeat-schedule"},
    "flower": {"address": "127.0.0.1", "port": "${BOOKRENDER_FLOWER_PORT}"},
    "health": {"host": "127.0.0.1", "port": "${BOOKRENDER_HEALTH_PORT}"},
}
COMPOSE_VALUES = {
    "web": {"bind": "0.0.0.0:8000", "log_level": "INFO"},
    "render-worker": {"log_level": "INFO", "hostname": "worker0@%h"},
    "maintenance-worker": {"log_level": "INFO", "hostname": "maintenance@%h"},
    "beat": {"log_level": "INFO", "schedule": "/data/celerybeat-schedule"},
    "flower": {"address": "0.0.0.0", "port": "5555"},
}


def exec_start(unit: str) -> list[str]:
    lines = re.findall(r"^ExecStart=(.*)$", (SERVICES / unit).read_text(), re.M)
    assert len(lines) == 1, unit
    argv = shlex.split(lines[0])
    if argv[:2] == ["/bin/sh", "-c"]:  # sh -c '... exec PROGRAM ARGS'
        inner = shlex.split(argv[2])
        argv = inner[inner.index("exec") + 1 :]
    return argv


def test_every_process_has_its_unit_and_every_bookrender_unit_its_process():
    units = {role.unit for role in topology.ROLES.values()}
    shipped = {p.name for p in SERVICES.glob("bookrender-*.service")} - {"bookrender-migrate.service"}
    assert units == shipped


@pytest.mark.parametrize("name", topology.ROLES)
def test_the_unit_runs_the_topology_command_line(name: str):
    role = topology.ROLES[name]
    assert role.unit
    argv = exec_start(role.unit)
    program = f"/opt/bookrender/.venv/bin/{role.program}"
    assert argv == topology.command(name, program=program, root="/opt/bookrender", **UNIT_VALUES[name])


@pytest.mark.parametrize("name", [name for name, role in topology.ROLES.items() if role.compose])
def test_compose_runs_the_topology_command_line(name: str):
    role = topology.ROLES[name]
    assert role.compose
    assert COMPOSE[role.compose]["command"] == topology.command(name, root="/app", **COMPOSE_VALUES[name])


def test_render_workers_consume_only_the_render_queue_and_one_process_does_maintenance():
    render = topology.command("render-worker", log_level="INFO", hostname="w@h")
    maintenance = topology.command("maintenance-worker", log_level="INFO", hostname="m@h")
    assert render[render.index("--queues") + 1] == "celery"
    assert maintenance[maintenance.index("--queues") + 1] == "maintenance"
    assert maintenance[maintenance.index("--concurrency") + 1] == "1"


def test_a_local_process_runs_the_same_arguments_with_this_python():
    assert topology.argv("beat", log_level="INFO", schedule="/tmp/s") == [
        sys.executable,
        "-m",
        "celery",
        *topology.command("beat", log_level="INFO", schedule="/tmp/s")[1:],
    ]
    assert topology.argv("health", host="127.0.0.1", port="9") == [
        sys.executable,
        "-m",
        "ops.healthserver",
        "--host",
        "127.0.0.1",
        "--port",
        "9",
    ]


def test_a_missing_value_is_an_error_that_names_it():
    with pytest.raises(KeyError, match="hostname"):
        topology.argv("render-worker", log_level="INFO")


def test_the_live_stacks_start_the_topology_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started: list[list[str]] = []

    class Recorder:
        def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
            started.append(argv)

    monkeypatch.setattr(livestack, "Process", Recorder)
    livestack.start_worker(env={}, log=tmp_path / "w.log", concurrency=3, wait=False, hostname="w@h")
    livestack.start_maintenance_worker(env={}, log=tmp_path / "m.log", wait=False, hostname="m@h")
    livestack.start_beat(env={}, log=tmp_path / "b.log")
    assert started == [
        topology.argv("render-worker", log_level="INFO", hostname="w@h"),
        topology.argv("maintenance-worker", log_level="INFO", hostname="m@h"),
        topology.argv("beat", log_level="INFO", schedule=str(tmp_path / "b.schedule")),
    ]
