"""``health-check.py``: run the health checks, print a report, alert on critical results.

    python ops/health/health-check.py                  # every check, a report for people
    python ops/health/health-check.py --json           # the same as one JSON object
    python ops/health/health-check.py --service comfyui@0 --service redis
    python ops/health/health-check.py --dry-run        # evaluate everything, send no alert

Exit status: 0 all ok, 1 a warning, 2 something critical. Thresholds: BOOKRENDER_HEALTH_*.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path


def django_setup() -> None:
    """The checks read bookrender's settings and database, as the app does."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="health-check.py",
        description="bookrender and ComfyUI health checks. Exit 0 ok, 1 warning, 2 critical.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument(
        "--service",
        action="append",
        metavar="NAME",
        help="only this service (repeatable): config, comfyui, comfyui@N, web, gpu, gpuN, system, disk, models, "
        "ports, redis, database (postgresql), celery, workerN, pages",
    )
    parser.add_argument("--dry-run", action="store_true", help="evaluate everything but send no alert")
    parser.add_argument("--log-dir", type=Path, help="also log to ops-maint.log and models-integ.log here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    django_setup()
    from django.conf import settings

    from ops.health import checks
    from ops.health.alerts import alert_start, alert_wait
    from ops.health.logs import MODELS_LOGGER, OPS_LOGGER, logs_setup
    from ops.health.report import report_json, report_text, status_counts

    # A dry run writes nothing, its own log files included: its lines go to stderr only.
    logs_setup(stream=sys.stderr, level=settings.LOG_LEVEL, log_dir=None if args.dry_run else args.log_dir)
    unknown = [name for name in args.service or [] if checks.check_family(name) is None]
    if unknown:
        print(f"health-check.py: unknown service {', '.join(unknown)}; see --help", file=sys.stderr)
        return 2

    ctx = checks.context_from_environment()
    results = checks.run_checks(ctx, args.service)
    code = checks.exit_code(results)
    at = datetime.now(UTC)
    for result in results:
        if result.status in (checks.Status.WARNING, checks.Status.CRITICAL):
            logger = logging.getLogger(MODELS_LOGGER if result.service == "models" else OPS_LOGGER)
            fields = {key: value for key, value in result.to_json().items() if key != "message"}
            logger.warning(result.message, extra={"event": "health.problem", **fields})
    logging.getLogger(OPS_LOGGER).info(
        "health check", extra={"event": "health.checked", "exit_code": code, "counts": status_counts(results)}
    )

    # The report goes out first; delivering the alert must never hold it up.
    critical = [result.to_json() for result in results if result.status is checks.Status.CRITICAL]
    delivery = None
    if critical:
        title = f"{len(critical)} critical health result{'s' if len(critical) > 1 else ''}"
        delivery = alert_start(url=ctx.alert_url, title=title, problems=critical, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report_json(results, at=at, dry_run=args.dry_run), indent=2))
    else:
        print(report_text(results, at=at, dry_run=args.dry_run))
    sys.stdout.flush()
    alert_wait(delivery)
    return code
