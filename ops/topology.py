"""One description of the running system: each long-running process, the queues it consumes and
its command line.

The systemd units (ops/services/) and docker-compose.yml write these command lines out, with
their own values for the placeholders; tests/ops/test_topology.py checks that they say the same
as this module. ``make run`` (ops/devstack.py) and every live stack (ops/livestack.py: the live
tests, the fault suite, the load test and the bench) start their processes through ``argv()``,
so what is tested is what is shipped.

Placeholders: ``{log_level}``, ``{hostname}`` (a Celery node name), ``{schedule}`` (beat's
schedule file), ``{bind}`` (gunicorn's host:port), ``{address}``/``{port}`` (Flower),
``{host}``/``{port}`` (the health server) and ``{root}`` (the checkout, /opt/bookrender, /app).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The render queue (a worker stops consuming it while its ComfyUI is down, renders/worker_gate.py)
# and the maintenance queue (the sweeper and the prober, config/settings.py CELERY_TASK_ROUTES).
RENDER_QUEUE = "celery"
MAINTENANCE_QUEUE = "maintenance"


@dataclass(frozen=True)
class Role:
    name: str
    program: str  # "celery", "gunicorn" or "python"
    args: tuple[str, ...]
    unit: str | None  # its systemd unit in ops/services/
    compose: str | None  # its service in docker-compose.yml


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "web",
            "gunicorn",
            (
                "config.wsgi:application",
                "--bind",
                "{bind}",
                "--log-level",
                "{log_level}",
                "--log-config-json",
                "{root}/ops/services/gunicorn-logging.json",
            ),
            "bookrender-web.service",
            "web",
        ),
        # One per ComfyUI. Its pool size is CELERY_WORKER_CONCURRENCY (two per instance by default):
        # render work only, so a page never waits behind maintenance and maintenance never waits
        # behind renders.
        Role(
            "render-worker",
            "celery",
            (
                "-A",
                "config",
                "--quiet",
                "worker",
                "--queues",
                RENDER_QUEUE,
                "--loglevel",
                "{log_level}",
                "--hostname",
                "{hostname}",
            ),
            "bookrender-worker@.service",
            "worker",
        ),
        # One per site: the sweeper (which resumes the pages of dead workers) and the prober. One
        # process, so a sweep never runs beside another; beat's messages expire after 10 s, which
        # only a worker that never renders can promise to meet.
        Role(
            "maintenance-worker",
            "celery",
            (
                "-A",
                "config",
                "--quiet",
                "worker",
                "--queues",
                MAINTENANCE_QUEUE,
                "--concurrency",
                "1",
                "--loglevel",
                "{log_level}",
                "--hostname",
                "{hostname}",
            ),
            "bookrender-maintenance.service",
            "maintenance",
        ),
        Role(
            "beat",
            "celery",
            ("-A", "config", "--quiet", "beat", "--loglevel", "{log_level}", "--schedule", "{schedule}"),
            "bookrender-beat.service",
            "beat",
        ),
        Role(
            "flower",
            "celery",
            ("-A", "config", "flower", "--address={address}", "--port={port}"),
            "bookrender-flower.service",
            "flower",
        ),
        Role(
            "health",
            "python",
            ("-m", "ops.healthserver", "--host", "{host}", "--port", "{port}"),
            "bookrender-health.service",
            None,
        ),
    )
}


def command(name: str, *, program: str | None = None, **values: str) -> list[str]:
    """The command line of process ``name`` with the placeholders filled in; ``program`` replaces
    the program's name (a unit runs /opt/bookrender/.venv/bin/celery)."""
    role = ROLES[name]
    return [program or role.program, *(arg.format(**values) for arg in role.args)]


def argv(name: str, **values: str) -> list[str]:
    """The command line that starts process ``name`` from this checkout, with this Python (so
    with this virtual environment's celery and gunicorn)."""
    role = ROLES[name]
    runner = [sys.executable] if role.program == "python" else [sys.executable, "-m", role.program]
    return [*runner, *command(name, root=str(ROOT), **values)[1:]]
