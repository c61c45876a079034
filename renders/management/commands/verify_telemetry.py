"""Check every finished attempt against the telemetry contract (seed 002).

Exit 0 when clean; exit 2, naming the book, page, attempt and field of each violation, when not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from renders.models import RenderAttempt
from renders.telemetry import telemetry_problems


class Command(BaseCommand):
    help = "Check every finished render attempt's telemetry; exit 2 on a violation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since", help="only attempts finished at or after this date or time (ISO, e.g. 2026-11-16)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        attempts = RenderAttempt.objects.exclude(outcome=RenderAttempt.Outcome.RUNNING).select_related("page")
        if options["since"]:
            try:
                since = datetime.fromisoformat(options["since"])
            except ValueError:
                raise CommandError(f"--since {options['since']!r} is not an ISO date or time") from None
            if timezone.is_naive(since):
                since = timezone.make_aware(since)
            attempts = attempts.filter(finished_at__gte=since)
        checked = violations = 0
        for attempt in attempts.order_by("finished_at").iterator():
            checked += 1
            success = attempt.outcome == RenderAttempt.Outcome.SUCCESS
            for field, problem in telemetry_problems(attempt.telemetry, success=success):
                violations += 1
                self.stderr.write(
                    f"book {attempt.page.book_id} page {attempt.page.number} attempt {attempt.number} "
                    f"({attempt.outcome}): {field} {problem}"
                )
        if violations:
            self.stderr.write(f"verify_telemetry: {violations} violation(s) in {checked} attempt(s)")
            raise SystemExit(2)
        self.stdout.write(f"verify_telemetry: {checked} attempt(s), all within the contract")
