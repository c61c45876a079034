"""The restart history that rate-limits auto-repair: each unit's restarts in the last hour, kept in
a small JSON file because every repair run is a fresh process (comfyui-repair.timer)."""

from __future__ import annotations

import json
import os
from pathlib import Path

HOUR = 3600.0


def restarts_load(path: Path | None) -> dict[str, list[float]]:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged history must not stop repairs; it only forgets old restarts
    return {str(unit): [float(t) for t in times] for unit, times in data.items() if isinstance(times, list)}


def restarts_recent(history: dict[str, list[float]], unit: str, *, now: float) -> list[float]:
    return [t for t in history.get(unit, []) if now - t < HOUR]


def restarts_record(path: Path | None, history: dict[str, list[float]], unit: str, *, now: float) -> None:
    history[unit] = [*restarts_recent(history, unit, now=now), now]
    if path is None:
        return
    # Written whole and renamed into place: a run killed halfway leaves the old file, not half of one.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(history, indent=1))
    os.replace(temporary, path)
