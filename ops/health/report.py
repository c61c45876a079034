"""The health report, for people (aligned columns) and for programs (one JSON object)."""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from ops.health.checks import Result, Status, exit_code

STATUS_WORD = {0: "OK", 1: "WARNING", 2: "CRITICAL"}


def status_counts(results: list[Result]) -> dict[str, int]:
    return {status.value: sum(1 for result in results if result.status is status) for status in Status}


def report_json(results: list[Result], *, at: datetime, dry_run: bool) -> dict[str, Any]:
    code = exit_code(results)
    return {
        "host": socket.gethostname(),
        "at": at.isoformat(timespec="seconds"),
        "status": STATUS_WORD[code].lower(),
        "exit_code": code,
        "dry_run": dry_run,
        "counts": status_counts(results),
        "results": [result.to_json() for result in results],
    }


def report_text(results: list[Result], *, at: datetime, dry_run: bool) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in status_counts(results).items())
    lines = [
        f"bookrender health on {socket.gethostname()} at {at:%Y-%m-%d %H:%M:%S} UTC: "
        f"{STATUS_WORD[exit_code(results)]} ({counts})" + ("  [dry run: no alert sent]" if dry_run else ""),
        "",
    ]
    service_width = max((len(result.service) for result in results), default=0)
    check_width = max((len(result.check) for result in results), default=0)
    for result in results:
        lines.append(
            f"  {result.status.value.upper():<13} {result.service:<{service_width}}  "
            f"{result.check:<{check_width}}  {result.message}"
        )
    return "\n".join(lines)
