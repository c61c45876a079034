from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from renders.reports import sweep_report_write


class Command(BaseCommand):
    help = "Write the weekly sweep report (report.json, report.html and PNG charts) for one week."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--week-start", required=True, help="first day of the week, YYYY-MM-DD")
        parser.add_argument("--out", help="folder for the report (default: $BOOKRENDER_VAR_DIR/reports/sweep-WEEK)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            week_start = date.fromisoformat(options["week_start"])
        except ValueError:
            raise CommandError(f"--week-start {options['week_start']!r} is not a date like 2026-11-16") from None
        out = Path(options["out"] or settings.VAR_DIR / "reports" / f"sweep-{week_start.isoformat()}")
        report = sweep_report_write(week_start=week_start, out_dir=out)
        flagged = [r["name"] for r in report["regressions"] if r["regressed"]]
        runs = report["week"]["runs"]
        self.stdout.write(f"sweep report for the week of {week_start}: {runs} attempts, written to {out}/report.html")
        self.stdout.write("regressions: " + (", ".join(flagged) if flagged else "none"))
