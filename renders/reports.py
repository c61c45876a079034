"""The weekly sweep report (seed 002, "Weekly Review Checklist"): what a week of rendering did,
and whether it regressed against the week before."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.utils import timezone

# Seed 002's regression criteria, for what bookrender measures. Frame counts and coherence scores
# belong to a video pipeline and are reported as not measured.
LATENCY_P95_LIMIT_S, LATENCY_P95_BASELINE_S = 140.0, 120.0
DONE_MARKER_SPIKE, DONE_MARKER_BASELINE = 0.15, 0.10
LATENCY_ESCALATION = 0.15  # p95 up more than 15% on the previous week


@dataclass(frozen=True)
class Week:
    start: date

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        begin = timezone.make_aware(datetime.combine(self.start, time.min))
        return begin, begin + timedelta(days=7)

    def previous(self) -> Week:
        return Week(self.start - timedelta(days=7))


def week_summary(week: Week) -> dict[str, Any]:
    # Imported here: percentile() and chart_save() also serve the load tools, which run without Django.
    from renders.models import RenderAttempt

    begin, end = week.bounds
    attempts = list(
        RenderAttempt.objects.exclude(outcome=RenderAttempt.Outcome.RUNNING)
        .filter(finished_at__gte=begin, finished_at__lt=end)
        .values(
            "outcome",
            "error",
            "telemetry",
            "started_at",
            "comfy_finished_at",
            "created_at",
            "finished_at",
            "instance_url",
        )
    )
    finished = [a for a in attempts if a["outcome"] in (RenderAttempt.Outcome.SUCCESS, RenderAttempt.Outcome.FAILED)]
    successes = [a for a in finished if a["outcome"] == RenderAttempt.Outcome.SUCCESS]
    execution = sorted(
        (a["comfy_finished_at"] - a["started_at"]).total_seconds()
        for a in successes
        if a["started_at"] and a["comfy_finished_at"]
    )
    # Claimed by a worker to the page Done: what a person waits for once the GPU is free.
    latency = sorted(
        (a["finished_at"] - a["created_at"]).total_seconds() for a in successes if a["created_at"] and a["finished_at"]
    )
    kinds = Counter(
        str((a["error"] or {}).get("kind", "unknown")) for a in finished if a["outcome"] == RenderAttempt.Outcome.FAILED
    )
    notes = Counter(
        note for a in attempts for note in (a["telemetry"] or {}).get("FallbackNotes", []) if isinstance(note, str)
    )
    deltas = [
        t["VramBeforeMB"] - t["VramAfterMB"]
        for t in (a["telemetry"] or {} for a in attempts)
        if isinstance(t.get("VramBeforeMB"), int) and isinstance(t.get("VramAfterMB"), int)
    ]
    exits = Counter(str((a["telemetry"] or {}).get("HistoryExitReason", "unknown")) for a in finished)
    markers = [bool((a["telemetry"] or {}).get("DoneMarkerDetected")) for a in successes]
    per_day = Counter(a["finished_at"].date().isoformat() for a in finished if a["finished_at"])
    ok_per_day = Counter(a["finished_at"].date().isoformat() for a in successes if a["finished_at"])
    return {
        "week_start": week.start.isoformat(),
        "runs": len(finished),
        "superseded": len(attempts) - len(finished),
        "successes": len(successes),
        "success_rate": round(len(successes) / len(finished), 4) if finished else None,
        "execution_s": _percentiles(execution),
        "latency_s": _percentiles(latency),
        "failure_kinds": dict(kinds.most_common()),
        "fallback_notes": [{"note": note, "count": n} for note, n in notes.most_common()],
        "vram_delta_mb": {
            "mean": round(statistics.fmean(deltas), 1) if deltas else None,
            "min": min(deltas, default=None),
            "max": max(deltas, default=None),
            "samples": len(deltas),
        },
        "history_exit_reasons": dict(exits.most_common()),
        "done_marker_missing_rate": round(1 - sum(markers) / len(markers), 4) if markers else None,
        "per_day": {day: {"runs": per_day[day], "successes": ok_per_day[day]} for day in sorted(per_day)},
        "instances": dict(Counter(a["instance_url"] for a in finished)),
        "_execution_values": execution,
        "_delta_values": deltas,
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "count": len(values)}


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between ranks as numpy's default; None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 3)


def regressions(this: dict[str, Any], last: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed 002's regression criteria, each flagged true, false or null (not enough data)."""

    def flag(name: str, rule: str, now: Any, before: Any, regressed: bool | None) -> dict[str, Any]:
        return {"name": name, "rule": rule, "this_week": now, "previous_week": before, "regressed": regressed}

    p95, p95_before = this["latency_s"]["p95"], last["latency_s"]["p95"]
    missing, missing_before = this["done_marker_missing_rate"], last["done_marker_missing_rate"]
    max_wait = this["history_exit_reasons"].get("maxWait", 0)
    both = p95 is not None and p95_before is not None
    return [
        flag(
            "LatencyRegression",
            f"P95 > {LATENCY_P95_LIMIT_S:g}s (was <= {LATENCY_P95_BASELINE_S:g}s previous week)",
            p95,
            p95_before,
            both and p95 > LATENCY_P95_LIMIT_S and p95_before <= LATENCY_P95_BASELINE_S if both else None,
        ),
        flag(
            "LatencyEscalation",
            f"P95 up more than {LATENCY_ESCALATION:.0%} on the previous week",
            p95,
            p95_before,
            both and p95_before > 0 and p95 > p95_before * (1 + LATENCY_ESCALATION) if both else None,
        ),
        flag(
            "ForcedCopySpike",
            f"image not read back > {DONE_MARKER_SPIKE:.0%} (was < {DONE_MARKER_BASELINE:.0%} previous week)",
            missing,
            missing_before,
            (missing > DONE_MARKER_SPIKE and missing_before < DONE_MARKER_BASELINE)
            if missing is not None and missing_before is not None
            else None,
        ),
        flag(
            "MaxWaitSpike",
            "any attempt ended by timeout (HistoryExitReason maxWait)",
            max_wait,
            last["history_exit_reasons"].get("maxWait", 0),
            max_wait > 0,
        ),
        flag(
            "FailureRateRegression",
            "success rate below 98% (seed 004's error budget)",
            this["success_rate"],
            last["success_rate"],
            this["success_rate"] < 0.98 if this["success_rate"] is not None else None,
        ),
        flag("FrameCountRegression", "not measured: bookrender renders single images", None, None, None),
        flag("QualityDegradation", "not measured: no coherence scores are collected", None, None, None),
    ]


def sweep_report_write(*, week_start: date, out_dir: Path) -> dict[str, Any]:
    """Write report.json, report.html and the charts for the week; return the report."""
    this, last = week_summary(Week(week_start)), week_summary(Week(week_start).previous())
    report = {
        "generated_at": timezone.now().isoformat(),
        "week": {k: v for k, v in this.items() if not k.startswith("_")},
        "previous_week": {k: v for k, v in last.items() if not k.startswith("_")},
        "regressions": regressions(this, last),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = _charts(this, out_dir)
    import json

    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.html").write_text(_html(report, charts))
    return report


def _charts(week: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: list[tuple[str, str]] = []
    days = list(week["per_day"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(days, [week["per_day"][d]["runs"] for d in days], color="#cbd5e1", label="attempts")
    ax.bar(days, [week["per_day"][d]["successes"] for d in days], color="#067647", label="succeeded")
    ax.set_title("Render attempts per day")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    charts.append(chart_save(fig, out_dir / "runs-per-day.png", "Render attempts per day"))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if week["_execution_values"]:
        ax.hist(week["_execution_values"], bins=30, color="#175cd3")
        for q, style in (("p50", "--"), ("p95", ":")):
            ax.axvline(
                week["execution_s"][q], color="#b42318", linestyle=style, label=f"{q} {week['execution_s'][q]:.2f} s"
            )
        ax.legend(fontsize=8)
    ax.set_title("ComfyUI execution time (s)")
    charts.append(chart_save(fig, out_dir / "execution-time.png", "ComfyUI execution time"))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    kinds = week["failure_kinds"]
    ax.barh(list(kinds) or ["none"], list(kinds.values()) or [0], color="#b42318")
    ax.set_title("Failed attempts by kind")
    charts.append(chart_save(fig, out_dir / "failure-kinds.png", "Failed attempts by kind"))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if week["_delta_values"]:
        ax.hist(week["_delta_values"], bins=30, color="#b54708")
    ax.set_title("VRAM before - after an attempt (MB)")
    charts.append(chart_save(fig, out_dir / "vram-delta.png", "VRAM delta"))
    return charts


def chart_save(fig: Any, path: Path, title: str) -> tuple[str, str]:
    """Write a matplotlib figure as PNG and free it; returns (file name, title) for the page."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name, title


def _html(report: dict[str, Any], charts: list[tuple[str, str]]) -> str:
    from django.template.loader import render_to_string

    return render_to_string("renders/sweep_report.html", {"report": report, "week": report["week"], "charts": charts})
