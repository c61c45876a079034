"""Percentiles and the latency summary both load tools report."""

from __future__ import annotations

from collections.abc import Iterable

from renders.reports import percentile

__all__ = ["distribution", "percentile"]


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 and max of a list of seconds."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3) if ordered else None,
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": round(ordered[-1], 3) if ordered else None,
    }
