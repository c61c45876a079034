"""The load test's SLA verdict (seed 004 §1.2) and its report: loadtest.json, index.html and the
PNG charts it shows (latency over time, queue depth, throughput)."""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

from ops.loadtest.stats import percentile
from renders.reports import chart_save

# Seed 004 §1.2, "Suggested Starting Target".
THROUGHPUT_MIN_PER_MIN = 20.0
CONCURRENT_BOOKS_MIN = 5
LATENCY_P95_MAX_S = 45.0
FAILED_RATE_MAX = 0.02
RECOVERY_MAX_S = 120.0
BUCKET_S = 10.0


def sla_rows(summary: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    throughput = summary["throughput_per_min"]
    p95 = summary["latency_s"]["p95"]
    failed_rate = summary["pages"]["failed_rate"]
    recovery = summary["recovery"]
    refill = recovery.get("kill_to_refill_s")
    rows = [
        {
            "metric": "Throughput",
            "definition": "images done per minute while the load ran",
            "target": f">= {THROUGHPUT_MIN_PER_MIN:g} images/min",
            "measured": f"{throughput:.1f} images/min" if throughput is not None else "none",
            "met": throughput is not None and throughput >= THROUGHPUT_MIN_PER_MIN,
            "note": f"{summary['throughput_overall_per_min']} images/min including the drain",
        },
        {
            "metric": "Latency p95",
            "definition": "request (POST /books/new) to the page's image stored",
            "target": f"<= {LATENCY_P95_MAX_S:g} s",
            "measured": f"{p95:.1f} s" if p95 is not None else "none",
            "met": p95 is not None and p95 <= LATENCY_P95_MAX_S,
            "note": "p50 {p50} s, p99 {p99} s, max {max} s".format(
                **{k: "-" if v is None else f"{v:.1f}" for k, v in summary["latency_s"].items()}
            ),
        },
        {
            "metric": "Error budget",
            "definition": "pages left Needs attention after bookrender's retries",
            "target": f"<= {FAILED_RATE_MAX:.0%}",
            "measured": f"{failed_rate:.1%}" if failed_rate is not None else "none",
            "met": failed_rate is not None and failed_rate <= FAILED_RATE_MAX,
            "note": f"{summary['attempts']['failed_rate']:.1%} of attempts failed and were retried "
            f"({summary['attempts']['errors_by_kind']})"
            if summary["attempts"]["failed_rate"] is not None
            else "",
        },
        {
            "metric": "Recovery time",
            "definition": "a ComfyUI killed mid-run: kill to its slots rendering again (down time included)",
            "target": f"<= {RECOVERY_MAX_S:g} s",
            "measured": f"{refill:.1f} s" if refill is not None else "not measured",
            "met": refill is not None and refill <= RECOVERY_MAX_S,
            "note": (
                f"down {recovery['down_s']} s; restart to refill {recovery['restart_to_refill_s']} s; "
                f"{recovery['lost_prompts']} lost prompts rendering again "
                f"{recovery['lost_pages_rendering_again_after_s']} s after the kill"
            )
            if recovery.get("measured")
            else "no instance was killed (--kill-instance-at 0)",
        },
    ]
    others_met = all(row["met"] for row in rows[:3])
    books = summary["books"]["max_in_flight"]
    pages = summary["pages"]["max_in_flight"]
    rows.insert(
        1,
        {
            "metric": "Concurrency",
            "definition": "books in flight at once while the targets above held",
            "target": f">= {CONCURRENT_BOOKS_MIN} books (~60 pages)",
            "measured": f"{books} books ({pages} pages)",
            "met": books >= CONCURRENT_BOOKS_MIN and others_met,
            "note": f"{args.books} books of {args.pages} pages kept in flight"
            + ("" if others_met else "; a target above was breached at this load"),
        },
    )
    return rows


def sla_table(rows: list[dict[str, Any]]) -> str:
    header = ("SLA (seed 004 §1.2)", "target", "measured", "")
    lines = [(row["metric"], row["target"], row["measured"], "PASS" if row["met"] else "FAIL") for row in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(4)]
    out = []
    for line in [header, *lines]:
        out.append("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return "\n".join(out)


def write_report(report: dict[str, Any], page_points: list[tuple[float, float]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "loadtest.json").write_text(json.dumps(report, indent=2, default=str))
    charts = _charts(report, page_points, out)
    (out / "index.html").write_text(_html(report, charts))


def _charts(report: dict[str, Any], points: list[tuple[float, float]], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = report["events"]
    samples = report["samples"]
    duration = float(report["parameters"]["duration"])
    charts: list[tuple[str, str]] = []

    def mark_events(ax: Any) -> None:
        marks = [(at, f"instance {name}", "#b54708", ":") for name, at in events.items()]
        marks.append((duration, "load stops", "#667085", "--"))
        top = ax.get_ylim()[1]
        for at, label, color, style in marks:
            ax.axvline(at, color=color, linestyle=style, linewidth=1)
            ax.text(at, top, label + " ", color=color, fontsize=7, rotation=90, ha="right", va="top")

    fig, ax = plt.subplots(figsize=(8, 3.4))
    if points:
        ax.scatter([t for t, _ in points], [lat for _, lat in points], s=6, color="#175cd3", alpha=0.6, label="page")
        rolling = _rolling_p95(points)
        ax.plot([t for t, _ in rolling], [v for _, v in rolling], color="#101828", label="p95 of the last 20 s")
    ax.axhline(LATENCY_P95_MAX_S, color="#b42318", linestyle="--", label=f"SLA p95 {LATENCY_P95_MAX_S:g} s")
    ax.set_xlabel("seconds since the load started (page done)")
    ax.set_ylabel("request to image (s)")
    ax.set_title("Latency over time")
    ax.legend(fontsize=7, loc="upper left")
    mark_events(ax)
    charts.append(chart_save(fig, out / "latency.png", "Latency over time"))

    fig, ax = plt.subplots(figsize=(8, 3.4))
    ts = [s["t"] for s in samples]
    ax.plot(ts, [s["queued"] for s in samples], color="#175cd3", label="pages Pending")
    ax.plot(ts, [s["rendering"] for s in samples], color="#067647", label="pages Rendering")
    ax.plot(
        ts,
        [s["redis_messages"] if s["redis_messages"] is not None else float("nan") for s in samples],
        color="#b54708",
        label="messages in Redis",
    )
    ax.set_xlabel("seconds since the load started")
    ax.set_title("Queue depth")
    ax.legend(fontsize=7, loc="upper left")
    mark_events(ax)
    charts.append(chart_save(fig, out / "queue.png", "Queue depth"))

    fig, ax = plt.subplots(figsize=(8, 3.4))
    if points:
        last = max(t for t, _ in points)
        buckets = [0] * (int(last // BUCKET_S) + 1)
        for t, _ in points:
            buckets[int(t // BUCKET_S)] += 1
        ax.bar(
            [i * BUCKET_S for i in range(len(buckets))],
            [n * 60 / BUCKET_S for n in buckets],
            width=BUCKET_S * 0.9,
            align="edge",
            color="#067647",
            label=f"images/min, per {BUCKET_S:g} s",
        )
    ax.axhline(THROUGHPUT_MIN_PER_MIN, color="#b42318", linestyle="--", label=f"SLA {THROUGHPUT_MIN_PER_MIN:g}/min")
    ax.set_xlabel("seconds since the load started")
    ax.set_title("Throughput")
    ax.legend(fontsize=7, loc="upper left")
    mark_events(ax)
    charts.append(chart_save(fig, out / "throughput.png", "Throughput"))
    return charts


def _rolling_p95(points: list[tuple[float, float]], window: float = 20.0) -> list[tuple[float, float]]:
    rolling = []
    for t, _ in points:
        recent = [lat for u, lat in points if t - window < u <= t]
        value = percentile(recent, 95)
        if value is not None:
            rolling.append((t, value))
    return rolling


def _html(report: dict[str, Any], charts: list[tuple[str, str]]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['metric'])}<div class=d>{e(r['definition'])}</div></td><td>{e(r['target'])}</td>"
        f"<td>{e(r['measured'])}<div class=d>{e(r['note'])}</div></td>"
        f"<td class={'ok' if r['met'] else 'bad'}>{'met' if r['met'] else 'breached'}</td></tr>"
        for r in report["sla"]
    )
    s = report["summary"]
    p = report["parameters"]
    facts = [
        ("Load", f"{p['books']} books x {p['pages']} pages kept in flight for {p['duration']} s"),
        ("Fleet", f"{p['instances']} simulated ComfyUI instances, render time {p['render_time']}"),
        ("Faults", json.dumps(p["faults"]) or "none"),
        ("Books", f"{s['books']['created']} created, {s['books']['settled']} settled"),
        (
            "Pages",
            f"{s['pages']['done']} done, {s['pages']['needs_attention']} need attention, "
            f"{s['pages']['not_settled']} not settled",
        ),
        ("Attempts", f"{s['attempts']['total']} ({s['attempts']['failed']} failed: {s['attempts']['errors_by_kind']})"),
        ("ComfyUI execution", f"p50 {s['execution_s']['p50']} s, p95 {s['execution_s']['p95']} s"),
        ("Fleet busy", f"{s['fleet_utilisation']:.0%} of the instances' time" if s["fleet_utilisation"] else "-"),
        ("Integrity", "; ".join(report["integrity_problems"]) or "no page lost, one image per page and attempt"),
        ("Machine", f"{report['environment']['cpus']} CPUs; {report['environment']['comfyui']}"),
    ]
    fact_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    images = "".join(f'<figure><img src="{e(name)}" alt="{e(title)}"></figure>' for name, title in charts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bookrender load test</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #101828; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0 2rem; }}
td, th {{ border-bottom: 1px solid #eaecf0; padding: .45rem .6rem; text-align: left; vertical-align: top; }}
.d {{ color: #667085; font-size: 12px; }} .ok {{ color: #067647; font-weight: 600; }}
.bad {{ color: #b42318; font-weight: 600; }} img {{ max-width: 100%; }} figure {{ margin: 0 0 1.5rem; }}
</style></head><body>
<h1>bookrender load test</h1>
<p>{e(report["generated_at"])}: web API, Redis, Celery workers and ComfyUI simulators, end to end.</p>
<h2>SLA (seed 004 §1.2)</h2>
<table><tr><th>Metric</th><th>Target</th><th>Measured</th><th></th></tr>{rows}</table>
<h2>Run</h2><table>{fact_rows}</table>
{images}
</body></html>
"""
