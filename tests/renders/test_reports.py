from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from books.models import Book, BookPage
from renders.models import RenderAttempt
from tests.conftest import builtin_style

pytestmark = pytest.mark.django_db
WEEK = datetime(2026, 11, 16, tzinfo=UTC)


def attempts(page: BookPage, *, start: datetime, count: int, seconds: float, failed: int = 0, first: int = 1) -> None:
    for n in range(count):
        at = start + timedelta(hours=n)
        ok = n >= failed
        attempt = RenderAttempt.objects.create(
            page=page,
            number=first + n,
            prompt_id=f"00000000-0000-4000-8000-{first + n:012d}",
            instance_url="http://gpu0:8188",
            workflow="model-free",
            seed=1,
            outcome="success" if ok else "failed",
            created_at=at,
            started_at=at,
            comfy_finished_at=at + timedelta(seconds=seconds),
            finished_at=at + timedelta(seconds=seconds + 0.05),
            error=None if ok else {"kind": "oom", "message": "out of memory"},
            telemetry={
                "VramBeforeMB": 9000,
                "VramAfterMB": 8500,
                "HistoryAttempts": 1,
                "HistoryExitReason": "success" if ok else "unknown",
                "ExecutionSuccessAt": at.isoformat() if ok else None,
                "DoneMarkerDetected": ok,
                "FallbackNotes": [] if ok else ["/system_stats unavailable"],
            },
        )
        RenderAttempt.objects.filter(pk=attempt.pk).update(created_at=at)  # past auto_now_add


@pytest.fixture
def page(alice) -> BookPage:
    book = Book.objects.create(owner=alice, title="t", **builtin_style())
    return BookPage.objects.create(book=book, number=1, prompt="p")


def test_the_report_summarises_the_week_and_flags_a_latency_regression(page, tmp_path: Path, capsys):
    attempts(page, start=WEEK - timedelta(days=7), count=10, seconds=100)
    attempts(page, start=WEEK, count=20, seconds=150, failed=2, first=100)
    call_command("sweep_report", week_start="2026-11-16", out=str(tmp_path))

    report = json.loads((tmp_path / "report.json").read_text())
    week = report["week"]
    assert week["runs"] == 20 and week["successes"] == 18 and week["success_rate"] == 0.9
    assert week["failure_kinds"] == {"oom": 2}
    assert week["fallback_notes"] == [{"note": "/system_stats unavailable", "count": 2}]
    assert week["vram_delta_mb"]["mean"] == 500
    assert week["execution_s"]["p95"] == pytest.approx(150)
    flags = {r["name"]: r["regressed"] for r in report["regressions"]}
    assert flags["LatencyRegression"] is True and flags["LatencyEscalation"] is True
    assert flags["FailureRateRegression"] is True and flags["MaxWaitSpike"] is False
    assert flags["QualityDegradation"] is None  # not measured, said so
    html = (tmp_path / "report.html").read_text()
    assert "REGRESSED" in html and "LatencyRegression" in html
    for chart in ("runs-per-day.png", "execution-time.png", "failure-kinds.png", "vram-delta.png"):
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{chart}"' in html
    assert "regressions: LatencyRegression, LatencyEscalation, FailureRateRegression" in capsys.readouterr().out


def test_an_empty_week_gives_a_report_that_says_so(tmp_path: Path):
    call_command("sweep_report", week_start="2020-01-06", out=str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["week"]["runs"] == 0 and report["week"]["success_rate"] is None
    assert all(r["regressed"] in (None, False) for r in report["regressions"])


def test_a_bad_week_start_is_refused():
    with pytest.raises(CommandError, match="not a date"):
        call_command("sweep_report", week_start="next monday")
