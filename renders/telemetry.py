"""The telemetry contract (seed 002): what every finished attempt records, and its checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

FIELDS = (
    "VramBeforeMB",
    "VramAfterMB",
    "HistoryAttempts",
    "HistoryExitReason",
    "ExecutionSuccessAt",
    "DoneMarkerDetected",
    "FallbackNotes",
)
# success: the end was seen on the WebSocket; postExecution: found by polling /history after the
# prompt ended; maxWait: timed out; attemptLimit: ComfyUI stayed unreachable; unknown: anything else.
EXIT_REASONS = ("success", "maxWait", "attemptLimit", "postExecution", "unknown")


def telemetry_finalize(telemetry: dict[str, Any]) -> dict[str, Any]:
    """Fill what an attempt that ended early (failed, superseded) never got to measure."""
    done = dict(telemetry)
    done.setdefault("FallbackNotes", [])
    for key in ("VramBeforeMB", "VramAfterMB"):
        if key not in done:
            done[key] = None
            done["FallbackNotes"] = [*done["FallbackNotes"], f"{key} not measured: the attempt ended before"]
    done.setdefault("HistoryAttempts", 0)
    done.setdefault("HistoryExitReason", "unknown")
    done.setdefault("ExecutionSuccessAt", None)
    done.setdefault("DoneMarkerDetected", False)
    return done


def telemetry_problems(telemetry: Any, *, success: bool) -> list[tuple[str, str]]:
    """(field, problem) for each way this attempt's telemetry breaks the contract."""
    if not isinstance(telemetry, dict):
        return [("telemetry", "is not an object")]
    problems = [(field, "is missing") for field in FIELDS if field not in telemetry]
    notes = telemetry.get("FallbackNotes")
    if "FallbackNotes" in telemetry and not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        problems.append(("FallbackNotes", "must be a list of strings"))
        notes = []
    for field in ("VramBeforeMB", "VramAfterMB"):
        value = telemetry.get(field)
        if field not in telemetry:
            continue
        if value is None:
            if not notes:
                problems.append((field, "is null and no FallbackNotes entry says why"))
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append((field, f"must be a whole number of MB, got {value!r}"))
    attempts = telemetry.get("HistoryAttempts")
    if "HistoryAttempts" in telemetry and (not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0):
        problems.append(("HistoryAttempts", f"must be a whole number >= 0, got {attempts!r}"))
    elif success and attempts == 0:
        problems.append(("HistoryAttempts", "is 0 for a successful attempt (history was never read)"))
    reason = telemetry.get("HistoryExitReason")
    if "HistoryExitReason" in telemetry and reason not in EXIT_REASONS:
        problems.append(("HistoryExitReason", f"{reason!r} is not one of {', '.join(EXIT_REASONS)}"))
    elif success and reason not in ("success", "postExecution"):
        problems.append(("HistoryExitReason", f"is {reason!r} for a successful attempt"))
    at = telemetry.get("ExecutionSuccessAt")
    if success:
        if not isinstance(at, str) or not _is_iso(at):
            problems.append(("ExecutionSuccessAt", f"must be an ISO time for a successful attempt, got {at!r}"))
    elif "ExecutionSuccessAt" in telemetry and at is not None and not (isinstance(at, str) and _is_iso(at)):
        problems.append(("ExecutionSuccessAt", f"must be null or an ISO time, got {at!r}"))
    marker = telemetry.get("DoneMarkerDetected")
    if "DoneMarkerDetected" in telemetry and not isinstance(marker, bool):
        problems.append(("DoneMarkerDetected", f"must be true or false, got {marker!r}"))
    elif success and marker is not True:
        problems.append(("DoneMarkerDetected", "is false for a successful attempt (the image was not read back)"))
    return problems


def _is_iso(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
        return True
    except ValueError:
        return False
