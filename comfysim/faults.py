"""Fault configuration: what goes wrong, how often, and how slow things are.

The same keys are accepted on the command line (`--render-time 0.5`, `--faults '{...}'`) and by
`POST /sim/faults`, which merges a JSON object into the live configuration. `POST /sim/reset`
goes back to the start-up configuration.

Per-prompt faults are `{"rate": p, "count": n}`: the next `n` prompts get the fault for sure (the
count goes down as they do), after that each prompt gets it with probability `p`, drawn from an
RNG seeded by `seed` so that a load test can be replayed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

# Faults decided when POST /prompt arrives.
SUBMIT_FAULTS = ("unavailable", "garbage", "validation")
# Faults decided when a prompt starts executing, in the order they win over each other.
RUN_FAULTS = ("hang", "oom", "error", "ws_drop")
PROMPT_FAULTS = SUBMIT_FAULTS + RUN_FAULTS

# `[sim:<name>]` in any string input of a graph forces that fault on the prompt.
MARKERS = ("validation", "oom", "error", "hang", "ws_drop", "crash")

OOM_EXCEPTION_TYPES = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "torch.AcceleratorError")
DEVICE_TYPES = ("cuda", "cpu")
DISTRIBUTIONS = ("uniform", "normal", "lognormal")


class FaultConfigError(ValueError):
    """A fault key or value that makes no sense; the message names the key."""


@dataclass(frozen=True)
class FaultSpec:
    rate: float = 0.0
    count: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {"rate": self.rate, "count": self.count}


@dataclass(frozen=True)
class Distribution:
    """A render time: a fixed number of seconds or a random draw (clamped at 0)."""

    kind: str
    params: tuple[float, ...]

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.params[0]
        a, b = self.params
        if self.kind == "uniform":
            return rng.uniform(a, b)
        if self.kind == "normal":
            return max(0.0, rng.gauss(a, b))
        return rng.lognormvariate(a, b)

    def mean(self) -> float:
        if self.kind == "fixed":
            return self.params[0]
        a, b = self.params
        if self.kind == "uniform":
            return (a + b) / 2
        if self.kind == "normal":
            return max(0.0, a)
        return math.exp(a + b * b / 2)


def parse_distribution(text: str, name: str = "render_time") -> Distribution:
    """Parse "0.05", "uniform:0.2,1.0", "normal:2.0,0.3" or "lognormal:mu,sigma"."""
    text = text.strip()
    if ":" not in text:
        seconds = _finite_float(name, text)
        if seconds < 0:
            raise FaultConfigError(f"{name}: {text!r} is negative")
        return Distribution("fixed", (seconds,))
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in DISTRIBUTIONS:
        raise FaultConfigError(
            f"{name}: unknown distribution {kind!r}; use a number of seconds or one of "
            + ", ".join(f"{d}:a,b" for d in DISTRIBUTIONS)
        )
    parts = [p for p in rest.split(",")]
    if len(parts) != 2:
        raise FaultConfigError(f"{name}: {kind} takes two numbers, got {rest!r}")
    a, b = (_finite_float(name, p) for p in parts)
    if kind == "uniform" and not 0 <= a <= b:
        raise FaultConfigError(f"{name}: uniform:{a},{b} needs 0 <= low <= high")
    if kind in ("normal", "lognormal") and b < 0:
        raise FaultConfigError(f"{name}: {kind} sigma must not be negative")
    return Distribution(kind, (a, b))


def _finite_float(key: str, value: object) -> float:
    if isinstance(value, bool):
        raise FaultConfigError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise FaultConfigError(f"{key}: expected a number, got {value!r}") from None
    else:
        raise FaultConfigError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise FaultConfigError(f"{key}: {value!r} is not a finite number")
    return number


def _non_negative_float(key: str, value: object) -> float:
    number = _finite_float(key, value)
    if number < 0:
        raise FaultConfigError(f"{key}: {value!r} is negative")
    return number


def _int(key: str, value: object, minimum: int) -> int:
    # bool is an int in Python, but `true` for a count is a mistake worth reporting.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FaultConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise FaultConfigError(f"{key}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise FaultConfigError(f"{key}: {number} is below the minimum of {minimum}")
    return number


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FaultConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _fault_spec(key: str, value: object, current: FaultSpec) -> FaultSpec:
    if not isinstance(value, Mapping):
        raise FaultConfigError(f'{key}: expected an object like {{"rate": 0.1, "count": 2}}, got {value!r}')
    unknown = sorted(set(value) - {"rate", "count"})
    if unknown:
        raise FaultConfigError(f"{key}: unknown field(s) {', '.join(unknown)}; use rate and count")
    rate = current.rate
    count = current.count
    if "rate" in value:
        rate = _finite_float(f"{key}.rate", value["rate"])
        if not 0.0 <= rate <= 1.0:
            raise FaultConfigError(f"{key}.rate: {rate} is not between 0 and 1")
    if "count" in value:
        count = _int(f"{key}.count", value["count"], 0)
    return FaultSpec(rate=rate, count=count)


@dataclass(frozen=True)
class FaultConfig:
    render_time: str = "0.05"
    seed: int | None = None
    history_delay: float = 0.0
    latency: float = 0.0
    # Seconds POST /prompt waits *after* queueing the prompt before it answers: a client with a
    # shorter timeout sees no answer although the prompt was accepted (a lost answer).
    prompt_answer_delay: float = 0.0
    crash_after: int | None = None
    vram_total_mb: int = 16311
    vram_free_mb: int = 14000
    # How much VRAM a running prompt takes; vram_free drops by this much while one runs.
    vram_busy_mb: int = 6144
    gpu_name: str = "NVIDIA GeForce RTX 5060 Ti"
    device_type: str = "cuda"
    oom_exception_type: str = "torch.OutOfMemoryError"
    # What the real ComfyUI 0.3.64 did on CPU: 14-38 s from a restart to answering again, and a
    # prompt that ends over 10 s after its last gc.collect() (the first after idling, and one
    # every 10 s of continuous work) ends 0.6-1.8 s late, the collection holding the GIL:
    # startup_delay 20, idle_gc_pause "uniform:0.6,1.8", idle_gc_after 10 (its interval).
    startup_delay: float = 0.0
    idle_gc_pause: str = "0"
    idle_gc_after: float = 10.0
    validation: FaultSpec = FaultSpec()
    oom: FaultSpec = FaultSpec()
    error: FaultSpec = FaultSpec()
    hang: FaultSpec = FaultSpec()
    ws_drop: FaultSpec = FaultSpec()
    garbage: FaultSpec = FaultSpec()
    unavailable: FaultSpec = FaultSpec()

    @property
    def render_distribution(self) -> Distribution:
        return parse_distribution(self.render_time)

    def spec(self, name: str) -> FaultSpec:
        spec = getattr(self, name)
        assert isinstance(spec, FaultSpec)
        return spec

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.to_json() if isinstance(value, FaultSpec) else value
        return out

    def merged(self, updates: Mapping[str, object]) -> FaultConfig:
        """Return a copy with `updates` applied; raise FaultConfigError naming the first bad key."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(updates) - known)
        if unknown:
            raise FaultConfigError(
                f"unknown fault key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        changes: dict[str, object] = {}
        for key, value in updates.items():
            if key in PROMPT_FAULTS:
                changes[key] = _fault_spec(key, value, self.spec(key))
            elif key in ("render_time", "idle_gc_pause"):
                text = value if isinstance(value, str) else str(_non_negative_float(key, value))
                parse_distribution(text, key)
                changes[key] = text.strip()
            elif key == "seed":
                changes[key] = None if value is None else _int(key, value, 0)
            elif key in ("history_delay", "latency", "prompt_answer_delay", "startup_delay", "idle_gc_after"):
                changes[key] = _non_negative_float(key, value)
            elif key == "crash_after":
                changes[key] = None if value is None else _int(key, value, 1)
            elif key in ("vram_total_mb", "vram_free_mb", "vram_busy_mb"):
                changes[key] = _int(key, value, 1 if key == "vram_total_mb" else 0)
            elif key == "gpu_name":
                if not isinstance(value, str) or not value.strip():
                    raise FaultConfigError(f"gpu_name: expected a non-empty string, got {value!r}")
                changes[key] = value.strip()
            elif key == "device_type":
                changes[key] = _choice(key, value, DEVICE_TYPES)
            elif key == "oom_exception_type":
                changes[key] = _choice(key, value, OOM_EXCEPTION_TYPES)
        merged = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        if merged.vram_free_mb > merged.vram_total_mb:
            raise FaultConfigError(
                f"vram_free_mb ({merged.vram_free_mb}) is more than vram_total_mb ({merged.vram_total_mb})"
            )
        return merged


class Faults:
    """The live fault state of one simulator process: config, start-up config and RNGs."""

    def __init__(self, startup: FaultConfig) -> None:
        self.startup = startup
        self.config = startup
        self._seed_rngs()

    def _seed_rngs(self) -> None:
        # Two streams, so that drawing render times does not shift which prompts get faults.
        seed = self.config.seed
        self._fault_rng = random.Random(f"faults:{seed}") if seed is not None else random.Random()
        self._time_rng = random.Random(f"render_time:{seed}") if seed is not None else random.Random()

    def update(self, updates: Mapping[str, object]) -> None:
        self.config = self.config.merged(updates)
        if "seed" in updates:
            self._seed_rngs()

    def reset(self) -> None:
        self.config = self.startup
        self._seed_rngs()

    def draw(self, name: str) -> bool:
        """Does this prompt get fault `name`? A pending count is used up first."""
        spec = self.config.spec(name)
        if spec.count > 0:
            self.config = self.config.merged({name: {"count": spec.count - 1}})
            return True
        return spec.rate > 0 and self._fault_rng.random() < spec.rate

    def render_seconds(self) -> float:
        return self.config.render_distribution.sample(self._time_rng)

    def gc_pause_seconds(self) -> float:
        """How long one garbage collection stops the server (see Simulator._collect_garbage)."""
        return parse_distribution(self.config.idle_gc_pause).sample(self._time_rng)


def markers_in(prompt: Mapping[str, object]) -> set[str]:
    """The `[sim:<name>]` markers found in any string input of the graph."""
    found: set[str] = set()
    for node in prompt.values():
        if not isinstance(node, Mapping):
            continue
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            continue
        for value in inputs.values():
            if isinstance(value, str) and "[sim:" in value:
                found.update(name for name in MARKERS if f"[sim:{name}]" in value)
    return found
