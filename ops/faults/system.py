"""A live bookrender for one fault scenario: ComfyUI simulators, a render worker, a maintenance
worker (sweeper and prober) and Celery beat, started as the units start them (ops/topology.py),
on the database and Redis this process uses. Everything it starts, it stops; logs go to the scenario's folder."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops import livestack
from ops.faults.audit import SubmissionLedger

# Fast enough to fit every scenario in a few minutes on two cores, and said in the report:
# a 3 s lease (README: "at most about lease + sweep interval" to resume), 1 s sweeps, short backoff.
SCENARIO_ENV = {
    "COMFY_LEASE_SEC": "3",
    "COMFY_RETRY_BACKOFF_SEC": "1,2,3",
    "COMFY_POLL_INTERVAL_SEC": "0.5",
    "COMFY_HTTP_TIMEOUT_SEC": "5",
}
SWEEP_INTERVAL_SEC = 1.0


@dataclass
class LiveSystem:
    workdir: Path
    sims: list[Any]
    env: dict[str, str]
    ledger: SubmissionLedger
    workers: list[livestack.Process] = field(default_factory=list)
    maintenance: livestack.Process | None = None
    beat: livestack.Process | None = None

    def start_worker(self, *, concurrency: int = 2, wait: bool = True) -> livestack.Process:
        log = self.workdir / f"worker-{len(self.workers)}.log"
        worker = livestack.start_worker(env=self.env, log=log, concurrency=concurrency, wait=wait)
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        """Every process log of the scenario, concatenated (for events like instance.down)."""
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("*.log")))

    def events(self, name: str) -> list[str]:
        """The JSON log lines with ``"event": name``."""
        pattern = re.compile(r'"event":\s*"' + re.escape(name) + '"')
        return [line for line in self.logs().splitlines() if pattern.search(line)]


@contextmanager
def live_system(
    workdir: Path,
    *,
    sims: int = 1,
    render_time: str = "0.3",
    instance_urls: list[str] | None = None,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    setup: Any = None,
) -> Iterator[LiveSystem]:
    """Start simulators, then (after ``setup(sims)``, which may return other instance URLs, such as
    a proxy's) the workers and beat pointed at them.

    ``instance_urls``: what bookrender renders on, when not the simulators themselves."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        simulators = stack.enter_context(
            livestack.simulators(sims, workdir=workdir, args=["--render-time", render_time])
        )
        urls = setup(simulators, stack) if setup is not None else instance_urls or [s.url for s in simulators]
        child_env = {**SCENARIO_ENV, **livestack.use_instances(urls), **(env or {})}
        ledger = SubmissionLedger(simulators).start()
        stack.callback(ledger.stop)
        system = LiveSystem(workdir=workdir, sims=simulators, env=child_env, ledger=ledger)
        system.maintenance = livestack.start_maintenance_worker(env=child_env, log=workdir / "maintenance.log")
        stack.callback(system.maintenance.stop)
        system.beat = livestack.start_beat(env=child_env, log=workdir / "beat.log", sweep_interval=SWEEP_INTERVAL_SEC)
        stack.callback(system.beat.stop)
        system.start_worker(concurrency=concurrency)

        def stop_workers() -> None:
            for worker in system.workers:
                worker.stop()

        stack.callback(stop_workers)
        yield system


def wait_until(condition: Any, *, timeout: float, interval: float = 0.05, what: str = "") -> float:
    """Poll ``condition`` until it is true; returns when (time.monotonic()), raises on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise ScenarioFailed(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


# Flushing a database is only safe on one made for this.
SAFE_DATABASE_SUFFIXES = ("_faults", "_loadtest", "_test")


def database_is_disposable() -> tuple[bool, str]:
    """Whether this process's database may be flushed (its name ends in a suffix above), and its name."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    name = str(db["NAME"])
    if db["ENGINE"].endswith("sqlite3"):
        return Path(name).stem.endswith(SAFE_DATABASE_SUFFIXES), name
    return name.endswith(SAFE_DATABASE_SUFFIXES), name


class ScenarioFailed(AssertionError):
    """An expectation of a scenario did not hold; the message says which."""
