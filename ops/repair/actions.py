"""Auto-repair: health results become a plan of actions, and each action is carried out, or, in a
dry run, only described. Every action is one JSON log line (``event`` repair.<kind>) saying what was
(or would be) done and how it went: planned, done, failed, skipped, rate-limited or reported.

A dry run changes nothing: no systemctl call, no HTTP POST, no file or database write (the
restart history included). It reads what it needs to describe the plan.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.health.alerts import alert_start
from ops.health.checks import Context, Result, Status, stuck_pages
from ops.health.logs import MODELS_LOGGER, OPS_LOGGER
from ops.repair.drift import SystemPaths, drift_find
from ops.repair.restarts import restarts_load, restarts_recent, restarts_record
from renders.comfy import ComfyClient, ComfyError

log = logging.getLogger(OPS_LOGGER)
models_log = logging.getLogger(MODELS_LOGGER)

PROBLEMS = (Status.WARNING, Status.CRITICAL)
# Rotated logs only (ops-maint.log-20261123.gz, x.log.1); a live *.log is logrotate's.
ROTATED_LOG = re.compile(r"\.log([-.].+)$")


@dataclass(frozen=True)
class Action:
    kind: str  # restart, free-vram, relink, requeue, clean-temp, clean-output, clean-logs, drift, none
    target: str  # a unit, an instance URL, a path, or what the action is about
    reason: str


@dataclass(frozen=True)
class Outcome:
    outcome: str  # planned, done, failed, skipped, rate-limited, reported
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Repair:
    """One run of auto-repair: its settings, and the alerts it started."""

    ctx: Context
    dry_run: bool
    systemctl: list[str]  # argv prefix: ["systemctl"], or a fake one in tests
    state_file: Path | None  # restart history
    log_dir: Path | None
    paths: SystemPaths
    now: float = field(default_factory=time.time)
    alerts: list[threading.Thread] = field(default_factory=list)

    def alert(self, title: str, problems: list[dict[str, Any]]) -> None:
        thread = alert_start(url=self.ctx.alert_url, title=title, problems=problems, dry_run=self.dry_run)
        if thread is not None:
            self.alerts.append(thread)


# --- planning ------------------------------------------------------------------------------------


def plan_from_results(results: list[Result]) -> list[Action]:
    """What the health results call for. A critical result that names a unit (a ComfyUI instance
    or a worker that does not answer) means a restart; other problems get their own repair, or an
    action of kind "none" that says a person must look."""
    actions: list[Action] = []
    for result in results:
        reason = f"{result.service} {result.check}: {result.message}"
        if result.status is Status.CRITICAL and result.unit:
            actions.append(Action("restart", result.unit, reason))
        elif result.check == "vram" and result.status in PROBLEMS and result.url:
            actions.append(Action("free-vram", result.url, reason))
        elif result.service == "models" and result.check == "link" and result.status in PROBLEMS and result.path:
            actions.append(Action("relink", result.path, reason))
        elif result.service == "pages" and result.check == "stuck" and result.status is Status.WARNING:
            actions.append(Action("requeue", "stuck pages", reason))
        elif result.service == "disk" and result.check == "comfyui-data" and result.status in PROBLEMS:
            actions += [Action("clean-temp", "temp", reason), Action("clean-output", "output", reason)]
        elif result.status in PROBLEMS:
            actions.append(Action("none", f"{result.service} {result.check}", reason))
    return _unique(actions)


def plan_housekeeping() -> list[Action]:
    """What ``--mode all`` does on every run, whatever the health check says."""
    return [
        Action("clean-temp", "temp", "housekeeping"),
        Action("clean-output", "output", "housekeeping"),
        Action("clean-logs", "logs", "housekeeping"),
        Action("drift", "configuration", "housekeeping"),
    ]


def _unique(actions: list[Action]) -> list[Action]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for action in actions:
        if (action.kind, action.target) not in seen:
            seen.add((action.kind, action.target))
            unique.append(action)
    return unique


def plan_order(actions: list[Action]) -> list[Action]:
    """Restarts first (a worker restarted before the sweep takes the requeued pages), then the
    rest; within a kind, the order the checks found them."""
    order = ["restart", "free-vram", "relink", "requeue", "clean-temp", "clean-output", "clean-logs", "drift", "none"]
    return sorted(_unique(actions), key=lambda action: order.index(action.kind))


# --- carrying it out -----------------------------------------------------------------------------


def action_run(repair: Repair, action: Action) -> Outcome:
    try:
        return _HANDLERS[action.kind](repair, action)
    except Exception as exc:  # one failed action must not stop the others
        return Outcome("failed", f"{type(exc).__name__}: {exc}")


def action_log(repair: Repair, action: Action, outcome: Outcome) -> None:
    logger = models_log if action.kind == "relink" else log
    level = logging.WARNING if needs_person(action, outcome) else logging.INFO
    logger.log(
        level,
        outcome.message,
        extra={
            "event": f"repair.{action.kind}",
            "target": action.target,
            "reason": action.reason,
            "outcome": outcome.outcome,
            "dry_run": repair.dry_run,
            **outcome.details,
        },
    )


def needs_person(action: Action, outcome: Outcome) -> bool:
    return outcome.outcome in ("failed", "rate-limited") or action.kind == "none"


def unit_restart(repair: Repair, action: Action) -> Outcome:
    unit = action.target
    history = restarts_load(repair.state_file)
    recent = restarts_recent(history, unit, now=repair.now)
    limit = repair.ctx.repair_policy.max_restarts_per_hour
    if len(recent) >= limit:
        title = f"{unit} was restarted {len(recent)} times in the last hour; not again, it needs a person"
        repair.alert(title, [{"service": unit, "check": "restart", "message": action.reason}])
        return Outcome("rate-limited", title, {"restarts_last_hour": len(recent)})
    commands = [
        # A unit that gave up (StartLimitBurst) refuses to start until its failed state is reset.
        [*repair.systemctl, "--no-ask-password", "reset-failed", unit],
        [*repair.systemctl, "--no-ask-password", "restart", unit],
    ]
    if repair.dry_run:
        return Outcome("planned", f"would restart {unit}", {"commands": [" ".join(c) for c in commands]})
    subprocess.run(commands[0], capture_output=True, text=True, timeout=60)
    done = subprocess.run(commands[1], capture_output=True, text=True, timeout=300)
    # Failed attempts count too: the limit is on how often we try.
    restarts_record(repair.state_file, history, unit, now=repair.now)
    if done.returncode != 0:
        return Outcome("failed", f"systemctl restart {unit} failed: {done.stderr.strip()[:300]}")
    return Outcome("done", f"restarted {unit}", {"restarts_last_hour": len(recent) + 1})


def instance_free_vram(repair: Repair, action: Action) -> Outcome:
    if repair.dry_run:
        return Outcome("planned", f"would POST {action.target}/free (unload models, free memory)")
    client = ComfyClient(action.target, timeout=repair.ctx.http_timeout)
    try:
        client.free()
        device = client.system_stats().gpu
    except ComfyError as exc:
        return Outcome("failed", f"/free on {action.target} failed: {exc.message}")
    # ComfyUI frees between prompts; the reading may not show it yet.
    free = f"{device.vram_free_mb} MB free now" if device else "no GPU reported"
    return Outcome("done", f"asked {action.target} to free VRAM; {free}")


def model_relink(repair: Repair, action: Action) -> Outcome:
    link = Path(action.target)
    store = repair.ctx.host.models_dir
    wanted = store / link.name if store else None
    if wanted is None or not wanted.exists():
        return Outcome("failed", f"{link} is broken and model storage has no {link.name} to point it at")
    if not link.is_symlink():
        return Outcome("skipped", f"{link} is no longer a symbolic link")
    old = os.readlink(link)
    if repair.dry_run:
        return Outcome("planned", f"would point {link} at {wanted} (now {old})")
    # A new link renamed over the old one: ComfyUI never sees the name missing.
    temporary = link.with_name(f".{link.name}.relink")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(wanted)
    os.replace(temporary, link)
    return Outcome("done", f"pointed {link} at {wanted} (was {old})")


def pages_requeue(repair: Repair, action: Action) -> Outcome:
    stuck = stuck_pages(older_than_sec=repair.ctx.thresholds.stuck_page_sec)
    counts = {"rendering_without_worker": stuck.lapsed, "queued_not_taken": stuck.overdue}
    if repair.dry_run:
        return Outcome("planned", f"would run the page sweeper for {stuck.total} stuck pages", counts)
    from renders.services import pages_sweep

    swept = pages_sweep()
    return Outcome(
        "done",
        f"page sweeper resumed {swept.resumed} and republished {swept.republished}",
        {**counts, "resumed": swept.resumed, "republished": swept.republished},
    )


def clean_temp(repair: Repair, action: Action) -> Outcome:
    hours = repair.ctx.repair_policy.temp_retention_hours
    return files_clean(repair, repair.ctx.host.data_dir / "temp", older_than_sec=hours * 3600)


def clean_output(repair: Repair, action: Action) -> Outcome:
    days = repair.ctx.repair_policy.output_retention_days
    return files_clean(repair, repair.ctx.host.data_dir / "output", older_than_sec=days * 86400)


def clean_logs(repair: Repair, action: Action) -> Outcome:
    if repair.log_dir is None:
        return Outcome("skipped", "no --log-dir given")
    days = repair.ctx.repair_policy.log_retention_days
    return files_clean(
        repair, repair.log_dir, older_than_sec=days * 86400, keep=lambda path: not ROTATED_LOG.search(path.name)
    )


def files_clean(
    repair: Repair, folder: Path, *, older_than_sec: float, keep: Callable[[Path], bool] = lambda path: False
) -> Outcome:
    """Delete the files under ``folder`` last modified before the cutoff, then the folders they
    leave empty. Symbolic links are never followed or deleted."""
    if not folder.is_dir():
        return Outcome("skipped", f"{folder} does not exist")
    cutoff = repair.now - older_than_sec
    old: list[tuple[Path, int]] = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff and not keep(path):
                old.append((path, info.st_size))
    size_mb = sum(size for _, size in old) / 1024**2
    age = f"{older_than_sec / 3600:g} h" if older_than_sec < 86400 * 2 else f"{older_than_sec / 86400:g} days"
    details: dict[str, Any] = {
        "files": len(old),
        "megabytes": round(size_mb, 1),
        "sample": [str(p) for p, _ in old[:5]],
    }
    if repair.dry_run:
        return Outcome(
            "planned", f"would delete {len(old)} files ({size_mb:.1f} MB) older than {age} in {folder}", details
        )
    failed = 0
    emptied: set[Path] = set()
    for path, _ in old:
        try:
            path.unlink()
            emptied.add(path.parent)
        except FileNotFoundError:
            pass
        except OSError:
            failed += 1
    # Folders this run emptied, and folders empty since before the cutoff; never the top one.
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            sub = Path(root, name)
            try:
                if not sub.is_symlink() and (sub in emptied or sub.lstat().st_mtime < cutoff):
                    sub.rmdir()  # only succeeds when empty
                    emptied.add(sub.parent)
            except OSError:
                pass
    outcome = "failed" if failed else "done"
    return Outcome(
        outcome, f"deleted {len(old) - failed} files ({size_mb:.1f} MB) older than {age} in {folder}", details
    )


def drift_report(repair: Repair, action: Action) -> Outcome:
    findings = drift_find(host=repair.ctx.host, instances=repair.ctx.instances, paths=repair.paths)
    for finding in findings:
        log.warning(
            finding.detail,
            extra={"event": "repair.drift", "target": finding.what, "outcome": "reported", "dry_run": repair.dry_run},
        )
    return Outcome("reported", f"{len(findings)} drift findings" if findings else "no configuration drift")


def nothing_to_do(repair: Repair, action: Action) -> Outcome:
    return Outcome("skipped", f"no automatic repair for {action.target}; a person must look")


_HANDLERS: dict[str, Callable[[Repair, Action], Outcome]] = {
    "restart": unit_restart,
    "free-vram": instance_free_vram,
    "relink": model_relink,
    "requeue": pages_requeue,
    "clean-temp": clean_temp,
    "clean-output": clean_output,
    "clean-logs": clean_logs,
    "drift": drift_report,
    "none": nothing_to_do,
}
