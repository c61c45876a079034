"""Simulator processes and WebSocket recorders for the comfysim tests, closed after each test.

No database here: these tests talk to the simulator over real sockets only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfysim.testing import SimulatorProcess, WsRecorder, running_simulator

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"


@pytest.fixture
def capture() -> Callable[[str], Any]:
    """Load a captured real-ComfyUI exchange from tests/fixtures/comfyui/."""

    def load(name: str) -> Any:
        with (CAPTURES / f"{name}.json").open(encoding="utf-8") as f:
            return json.load(f)

    return load


@pytest.fixture
def start_sim() -> Iterator[Callable[..., SimulatorProcess]]:
    """start_sim("--render-time", "0") -> a running simulator, stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(*args: str, output_dir: Path | None = None) -> SimulatorProcess:
            return stack.enter_context(running_simulator(args=list(args), output_dir=output_dir))

        yield start


@pytest.fixture
def sim(start_sim: Callable[..., SimulatorProcess]) -> SimulatorProcess:
    """An instant simulator (no render time) with ComfyUI's test nodes, as the captures used."""
    return start_sim("--render-time", "0", "--test-nodes")


@pytest.fixture
def connect() -> Iterator[Callable[..., WsRecorder]]:
    """connect(sim, client_id=None, feature_flags=False) -> a recording WebSocket client."""
    recorders: list[WsRecorder] = []

    def open_socket(sim: SimulatorProcess, client_id: str | None = None, feature_flags: bool = False) -> WsRecorder:
        recorder = sim.connect_ws(client_id, feature_flags=feature_flags)
        recorder.wait_for(lambda m: isinstance(m, dict) and m["type"] == "status")
        recorders.append(recorder)
        return recorder

    yield open_socket
    for recorder in recorders:
        recorder.close()
