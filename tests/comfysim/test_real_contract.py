# mypy: disable-error-code="no-untyped-call"
"""The captures in tests/fixtures/comfyui/ hold for the real ComfyUI too, not only the simulator.

The contract tests of test_contract.py that need no simulator control (no /sim/ faults, no test
nodes, no fresh server per test) run here unchanged against one real ComfyUI on CPU, installed by
ops/comfyui.py (tests/realcomfyui.py). The first test must stay first: it expects queue number 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from comfysim.testing import SimulatorProcess
from tests.comfysim import test_contract as contract
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def server(real_comfyui: Any) -> Iterator[SimulatorProcess]:
    """The real ComfyUI behind the simulator's test handle: the same HTTP and WebSocket helpers."""
    assert real_comfyui.process is not None
    data = real_comfyui.data_dir
    yield SimulatorProcess(
        port=real_comfyui.port,
        output_dir=data / "output" / "0",
        input_dir=data / "input" / "0",
        temp_dir=data / "temp" / "0",
        args=[],
        log_path=real_comfyui.log_path,
        process=real_comfyui.process,
    )


@pytest.fixture(autouse=True)
def idle_server(server: SimulatorProcess) -> None:
    """Each test starts on an idle ComfyUI: a prompt an earlier test left would show in its captures."""

    def idle() -> bool:
        queue = server.get("/queue")
        return not queue["queue_running"] and not queue["queue_pending"]

    wait_for(idle, timeout=60, interval=0.05, message=lambda: f"ComfyUI still busy: {server.get('/queue')}")


def test_a_page_renders_like_the_capture(server, connect, capture):
    contract.test_a_page_renders_like_the_capture(server, connect, capture)


@pytest.mark.parametrize("case", sorted(contract.INVALID))
def test_a_bad_request_is_answered_like_the_capture(server, case):
    contract.test_a_bad_request_is_answered_like_the_capture(server, case)


def test_one_bad_output_drops_only_its_branch(server):
    contract.test_one_bad_output_drops_only_its_branch(server)


def test_invalid_prompts_still_use_up_numbers(server):
    contract.test_invalid_prompts_still_use_up_numbers(server)


def test_the_websocket_greets_and_negotiates_feature_flags(server, capture):
    contract.test_the_websocket_greets_and_negotiates_feature_flags(server, capture)


def test_model_free_workflows_give_the_captured_outputs(server, capture):
    contract.test_model_free_workflows_give_the_captured_outputs(server, capture)


def test_the_0_3_64_server_has_no_jobs_api(server):
    contract.test_the_0_3_64_server_has_no_jobs_api(server)


def test_an_uploaded_image_loads_and_frames_save_as_one_animated_webp(server):
    contract.test_an_uploaded_image_loads_and_frames_save_as_one_animated_webp(server)
