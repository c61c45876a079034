"""Typed readers for configuration from the environment.

Nothing here raises: a malformed value is recorded in ``ERRORS`` and the default is used, so that
Django can start far enough to run its system checks, which turn every recorded error into a
start-up failure that names the variable (``renders.E001``; see ``renders/checks.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvError:
    name: str
    value: str
    problem: str


ERRORS: list[EnvError] = []
# Every variable this project reads, so that a misspelt one is reported instead of silently ignored.
KNOWN: dict[str, str] = {}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, default: str) -> str | None:
    KNOWN[name] = default
    return os.environ.get(name)


def env_str(name: str, default: str) -> str:
    value = _raw(name, default)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name, str(default).lower())
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    ERRORS.append(EnvError(name, value, "expected true or false"))
    return default


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name, str(default))
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        ERRORS.append(EnvError(name, value, "expected a whole number"))
        return default
    if minimum is not None and number < minimum:
        ERRORS.append(EnvError(name, value, f"must be at least {minimum}"))
        return default
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name, str(default))
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        ERRORS.append(EnvError(name, value, "expected a number"))
        return default
    if not math.isfinite(number):  # float() takes "nan" and "inf"; every comparison with nan is False
        ERRORS.append(EnvError(name, value, "expected a finite number"))
        return default
    if minimum is not None and number < minimum:
        ERRORS.append(EnvError(name, value, f"must be at least {minimum}"))
        return default
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name, ",".join(default))
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_float_list(name: str, default: list[float], *, minimum: float = 0) -> list[float]:
    value = _raw(name, ",".join(f"{item:g}" for item in default))
    if value is None:
        return list(default)
    try:
        numbers = [float(item) for item in value.split(",") if item.strip()]
    except ValueError:
        ERRORS.append(EnvError(name, value, "expected comma-separated numbers, like 15,45,90"))
        return list(default)
    if not numbers:
        ERRORS.append(EnvError(name, value, "expected at least one number"))
        return list(default)
    if not all(math.isfinite(number) for number in numbers):
        ERRORS.append(EnvError(name, value, "expected finite numbers"))
        return list(default)
    if any(number < minimum for number in numbers):
        ERRORS.append(EnvError(name, value, f"every value must be at least {minimum:g}"))
        return list(default)
    return numbers


def error(name: str, value: str, problem: str) -> None:
    ERRORS.append(EnvError(name, value, problem))


# Variables with these prefixes belong to bookrender; one we do not read is a typo or a leftover.
OWN_PREFIXES = ("BOOKRENDER_", "COMFY_", "COMFYUI_", "CELERY_")


def unknown_variables() -> list[str]:
    return sorted(name for name in os.environ if name.startswith(OWN_PREFIXES) and name not in KNOWN)
