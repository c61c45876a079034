"""``auto-repair.py``: diagnose with the health checks, then repair.

    python ops/repair/auto-repair.py --dry-run                     # the plan; changes nothing
    python ops/repair/auto-repair.py --dry-run --mode health-check # only what the checks flagged
    python ops/repair/auto-repair.py                               # repair (comfyui-repair.timer)

Every action is one JSON line on stdout (and in ops-maint.log with --log-dir). Exit 0 when every
action went well (or there was nothing to do), 1 when something needs a person: a failed or
rate-limited repair, or a problem with no automatic repair.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ops.health.cli import django_setup


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auto-repair.py", description="Diagnose, then repair bookrender and ComfyUI.")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument(
        "--mode",
        choices=("all", "health-check"),
        default="all",
        help="health-check: only what the health check flagged; all (default): that, plus cleaning files past "
        "retention and the configuration drift report",
    )
    parser.add_argument(
        "--systemctl",
        default="systemctl",
        help="the systemctl command (tests pass a fake one); default: systemctl",
    )
    parser.add_argument("--state-file", type=Path, help="restart history for the hourly limit (default: none kept)")
    parser.add_argument("--log-dir", type=Path, help="also log to ops-maint.log here, and clean its rotated logs")
    parser.add_argument("--systemd-dir", type=Path, default=Path("/etc/systemd/system"), help="installed units")
    parser.add_argument(
        "--env-file", type=Path, default=Path("/etc/bookrender/bookrender.env"), help="bookrender's env file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    django_setup()
    from django.conf import settings

    from ops.health import checks
    from ops.health.alerts import alert_wait
    from ops.health.logs import OPS_LOGGER, logs_setup
    from ops.repair.actions import (
        Repair,
        action_log,
        action_run,
        needs_person,
        plan_from_results,
        plan_housekeeping,
        plan_order,
    )
    from ops.repair.drift import SystemPaths

    # A dry run writes nothing, its own log files included: its lines go to stdout only.
    logs_setup(stream=sys.stdout, level=settings.LOG_LEVEL, log_dir=None if args.dry_run else args.log_dir)
    log = logging.getLogger(OPS_LOGGER)
    ctx = checks.context_from_environment()
    repair = Repair(
        ctx=ctx,
        dry_run=args.dry_run,
        systemctl=shlex.split(args.systemctl),
        state_file=args.state_file,
        log_dir=args.log_dir,
        paths=SystemPaths(systemd_dir=args.systemd_dir, env_file=args.env_file),
    )
    results = checks.run_checks(ctx)
    actions = plan_from_results(results)
    if args.mode == "all":
        actions += plan_housekeeping()
    actions = plan_order(actions)
    log.info(
        f"{len(actions)} actions" + (" (dry run: nothing will be changed)" if args.dry_run else ""),
        extra={
            "event": "repair.plan",
            "mode": args.mode,
            "dry_run": args.dry_run,
            "health_exit_code": checks.exit_code(results),
            "actions": [f"{action.kind} {action.target}" for action in actions],
        },
    )
    person = False
    for action in actions:
        outcome = action_run(repair, action)
        action_log(repair, action, outcome)
        person |= needs_person(action, outcome)
    for thread in repair.alerts:
        alert_wait(thread)
    return 1 if person else 0
