"""Every fault the simulator can inject does what it says, and shows in /sim/stats or the answers."""

from __future__ import annotations

import itertools
import json
import signal
import time
import uuid
from typing import Any

import pytest
import requests

from comfysim.executor import OOM_TIPS
from comfysim.testing import SimulatorError, SimulatorProcess, image_graph, sdxl_graph

MIB = 1024 * 1024


def last_message(entry: dict[str, Any]) -> list[Any]:
    return entry["status"]["messages"][-1]  # type: ignore[no-any-return]


def run(sim: SimulatorProcess, graph: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Submit a graph and wait for its history entry."""
    return sim.wait_for_history(sim.submit(graph, **fields)["prompt_id"])


def test_the_control_endpoint_rejects_unknown_keys_and_bad_values(sim):
    before = sim.faults()
    for body, word in (
        ({"no_such_fault": 1}, "no_such_fault"),
        ({"oom": {"rate": 2}}, "oom.rate"),
        ({"oom": {"often": True}}, "often"),
        ({"oom": 0.5}, "oom"),
        ({"render_time": "weird:1,2"}, "render_time"),
        ({"render_time": "uniform:2,1"}, "render_time"),
        ({"crash_after": 0}, "crash_after"),
        ({"vram_free_mb": 999999}, "vram_free_mb"),
        ({"device_type": "tpu"}, "device_type"),
        ({"idle_gc_pause": "sometimes"}, "idle_gc_pause"),
        ({"startup_delay": -1}, "startup_delay"),
        ([1, 2], "object"),
    ):
        status, answer = sim.post("/sim/faults", body)
        assert status == 400, body
        assert word in answer["error"], answer
    assert sim.faults() == before


def test_set_faults_merges_and_reset_goes_back_to_the_startup_config(start_sim):
    sim = start_sim("--render-time", "0.01", "--faults", '{"oom": {"rate": 0.25}}', "--history-delay", "0")
    assert sim.faults()["oom"] == {"rate": 0.25, "count": 0}

    merged = sim.set_faults(oom={"count": 2}, render_time="uniform:0.1,0.2", latency=0.01)
    assert merged["oom"] == {"rate": 0.25, "count": 2}
    assert (merged["render_time"], merged["latency"]) == ("uniform:0.1,0.2", 0.01)
    sim.submit(image_graph("counted"))
    assert sim.stats()["submitted"] == 1

    reset = sim.reset()
    assert reset["oom"] == {"rate": 0.25, "count": 0}
    assert (reset["render_time"], reset["latency"]) == ("0.01", 0.0)
    assert sim.stats()["submitted"] == 0


def test_render_time_is_spent_in_the_slow_node_with_progress(start_sim, connect):
    sim = start_sim("--render-time", "0.5")
    ws = connect(sim, "timed")
    started = time.monotonic()
    entry = run(sim, image_graph("timed"), client_id="timed")
    elapsed = time.monotonic() - started

    assert elapsed >= 0.5
    start, end = entry["status"]["messages"][0][1]["timestamp"], entry["status"]["messages"][-1][1]["timestamp"]
    assert end - start >= 500
    # The history can answer before the socket has delivered the prompt's last messages.
    ws.wait_done(entry["prompt"][1], timeout=60)
    progress = [m["data"] for m in ws.json_messages() if m["type"] == "progress"]
    assert progress[-1] == {"value": 1.0, "max": 1.0, "prompt_id": entry["prompt"][1], "node": "1"}
    assert 3 <= len(progress) <= 12  # at most ~20 a second


@pytest.mark.parametrize(
    ("distribution", "low", "high"),
    [("uniform:0.05,0.2", 0.05, 0.2), ("normal:0.1,0.02", 0.0, 0.2), ("lognormal:-2.3,0.2", 0.0, 0.25)],
)
def test_render_time_distributions_are_respected(start_sim, distribution, low, high):
    sim = start_sim("--render-time", distribution, "--seed", "11")
    ids = [sim.submit(image_graph(f"dist{n}", color=n))["prompt_id"] for n in range(6)]
    durations = []
    for prompt_id in ids:
        messages = sim.wait_for_history(prompt_id)["status"]["messages"]
        durations.append((messages[-1][1]["timestamp"] - messages[0][1]["timestamp"]) / 1000)
    assert all(low <= d <= high + 0.1 for d in durations), durations
    assert len({round(d, 2) for d in durations}) > 1, "a distribution should not give one fixed time"


def test_an_oom_fault_fails_the_next_prompt_on_the_sampler(start_sim):
    sim = start_sim("--render-time", "0.1", "--faults", '{"oom": {"count": 1}}')
    failed = run(sim, sdxl_graph("a fox", prefix="oom/page"))
    passed = run(sim, sdxl_graph("a fox", prefix="oom/page", seed=1))

    event, error = last_message(failed)
    assert (event, failed["status"]["status_str"], failed["status"]["completed"]) == ("execution_error", "error", False)
    assert (error["node_id"], error["node_type"]) == ("3", "KSampler")
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("CUDA out of memory. Tried to allocate 2.50 GiB.")
    assert error["exception_message"].endswith("\n" + OOM_TIPS)
    assert set(error["current_inputs"]) >= {"model", "seed", "steps", "positive", "negative", "latent_image"}
    assert sorted(error["executed"]) == ["4", "5", "6", "7"]
    assert passed["status"]["status_str"] == "success"
    stats = sim.stats()
    assert (stats["faults"], stats["failed"], stats["completed"]) == ({"oom": 1}, 1, 1)
    assert sim.faults()["oom"]["count"] == 0


def test_the_oom_exception_type_can_be_the_older_torch_name(start_sim):
    sim = start_sim("--render-time", "0", "--oom-exception-type", "torch.cuda.OutOfMemoryError")
    error = last_message(run(sim, sdxl_graph("[sim:oom] a fox")))[1]
    assert error["exception_type"] == "torch.cuda.OutOfMemoryError"
    assert OOM_TIPS in error["exception_message"]


def test_an_error_fault_is_a_runtime_error(start_sim):
    sim = start_sim("--render-time", "0")
    sim.set_faults(error={"count": 1})
    event, error = last_message(run(sim, image_graph("broken")))
    assert (event, error["exception_type"], error["node_id"]) == ("execution_error", "RuntimeError", "1")
    assert error["exception_message"].endswith("\n")
    assert OOM_TIPS not in error["exception_message"]
    assert sim.stats()["faults"] == {"error": 1}


def test_a_hanging_prompt_runs_until_it_is_interrupted(start_sim):
    sim = start_sim("--render-time", "0.05")
    sim.set_faults(hang={"count": 1})
    hung = sim.submit(image_graph("hung"))["prompt_id"]
    waiting = sim.submit(image_graph("after-hang", color=9))["prompt_id"]
    time.sleep(0.6)
    assert [item[1] for item in sim.get("/queue")["queue_running"]] == [hung]
    assert sim.history(hung) == {}

    requests.post(sim.url + "/interrupt", json={"prompt_id": waiting}, timeout=10)  # not running: ignored
    time.sleep(0.2)
    assert sim.history(hung) == {}
    requests.post(sim.url + "/interrupt", json={"prompt_id": hung}, timeout=10)
    assert last_message(sim.wait_for_history(hung))[0] == "execution_interrupted"
    assert sim.wait_for_history(waiting)["status"]["status_str"] == "success"
    stats = sim.stats()
    assert (stats["interrupted"], stats["completed"], stats["faults"]) == (1, 1, {"hang": 1})


def test_a_ws_drop_closes_every_socket_of_the_client_and_the_prompt_still_completes(start_sim, connect):
    sim = start_sim("--render-time", "0.4")
    taken_over = connect(sim, "dropped")
    current = connect(sim, "dropped")
    bystander = connect(sim, "someone-else")
    sim.set_faults(ws_drop={"count": 1})
    prompt_id = sim.submit(image_graph("dropped"), client_id="dropped")["prompt_id"]

    assert current.closed.wait(5) and taken_over.closed.wait(5)
    assert current.close_reason != "close frame"  # no close handshake: the connection just died
    assert sim.wait_for_history(prompt_id)["status"]["status_str"] == "success"
    assert not bystander.closed.is_set()
    assert sim.stats()["ws_dropped"] == 2
    assert sim.stats()["faults"] == {"ws_drop": 1}


def test_garbage_answers_200_with_a_body_that_is_not_json_and_queues_nothing(start_sim):
    sim = start_sim("--render-time", "0")
    sim.set_faults(garbage={"count": 1})
    response = requests.post(sim.url + "/prompt", json={"prompt": image_graph("garbage")}, timeout=10)
    assert response.status_code == 200
    assert response.text == "<html>oops"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    time.sleep(0.1)
    assert sim.get("/queue") == {"queue_running": [], "queue_pending": []}
    assert sim.get("/history") == {}
    assert (sim.stats()["submitted"], sim.stats()["faults"]) == (0, {"garbage": 1})
    assert sim.submit(image_graph("garbage"))["number"] == 0  # the counter never saw it


def test_unavailable_answers_503_in_plain_text(start_sim):
    sim = start_sim("--render-time", "0", "--faults", '{"unavailable": {"rate": 1.0}}')
    response = requests.post(sim.url + "/prompt", json={"prompt": image_graph("busy")}, timeout=10)
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/plain")
    assert sim.stats()["submitted"] == 0
    sim.set_faults(unavailable={"rate": 0})
    assert sim.submit(image_graph("busy"))["node_errors"] == {}


def test_a_validation_fault_refuses_the_prompt_with_the_captured_400_shape(start_sim):
    sim = start_sim("--render-time", "0")
    sim.set_faults(validation={"count": 1})
    response = requests.post(sim.url + "/prompt", json={"prompt": image_graph("refused")}, timeout=10)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    }
    assert body["node_errors"] == {
        "1": {
            "errors": [
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "width - simulated validation fault",
                    "extra_info": {"input_name": "width"},
                }
            ],
            "dependent_outputs": ["2"],
            "class_type": "EmptyImage",
        }
    }
    assert sim.submit(image_graph("accepted"))["node_errors"] == {}
    assert (sim.stats()["rejected"], sim.stats()["faults"]) == (1, {"validation": 1})


def test_a_validation_marker_names_the_node_and_input_that_carry_it(start_sim):
    sim = start_sim("--render-time", "0")
    response = requests.post(sim.url + "/prompt", json={"prompt": sdxl_graph("[sim:validation] a cat")}, timeout=10)
    assert response.status_code == 400
    errors = response.json()["node_errors"]
    assert list(errors) == ["6"]
    assert errors["6"]["errors"][0]["extra_info"] == {"input_name": "text"}
    assert errors["6"]["dependent_outputs"] == ["9"]


@pytest.mark.parametrize(("marker", "exception_type"), [("oom", "torch.OutOfMemoryError"), ("error", "RuntimeError")])
def test_a_marker_fails_its_prompt_every_time(start_sim, marker, exception_type):
    sim = start_sim("--render-time", "0")
    graph = sdxl_graph(f"[sim:{marker}] a lighthouse")
    for _ in range(2):  # the failed sampler is not cached, so a retry fails again
        event, error = last_message(run(sim, graph))
        assert (event, error["exception_type"], error["node_id"]) == ("execution_error", exception_type, "3")
    assert run(sim, sdxl_graph("a lighthouse"))["status"]["status_str"] == "success"


def test_hang_and_ws_drop_markers(start_sim, connect):
    sim = start_sim("--render-time", "0.2")
    ws = connect(sim, "marked")
    dropped = sim.submit(sdxl_graph("[sim:ws_drop] a ship"), client_id="marked")["prompt_id"]
    assert ws.closed.wait(5)
    assert sim.wait_for_history(dropped)["status"]["status_str"] == "success"

    hung = sim.submit(sdxl_graph("[sim:hang] a ship"))["prompt_id"]
    time.sleep(0.5)
    assert sim.history(hung) == {}
    requests.post(sim.url + "/interrupt", timeout=10)
    assert last_message(sim.wait_for_history(hung))[0] == "execution_interrupted"


def test_a_crash_marker_kills_the_process_like_kill_9(start_sim):
    sim = start_sim("--render-time", "0")
    done = run(sim, image_graph("before-crash"))["prompt"][1]
    sim.submit(sdxl_graph("[sim:crash] a storm"))
    assert sim.wait_exit() == -signal.SIGKILL
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.url + "/queue", timeout=2)

    sim.restart()
    assert sim.history(done) == {}
    assert sim.get("/queue") == {"queue_running": [], "queue_pending": []}
    assert (sim.output_dir / "before-crash_00001_.png").exists()  # files on disk survive


def test_crash_after_kills_the_process_mid_render_of_the_nth_prompt(start_sim):
    sim = start_sim("--render-time", "0.8", "--crash-after", "2")
    first = run(sim, image_graph("first"))
    assert first["status"]["status_str"] == "success"
    second = sim.submit(image_graph("second"))["prompt_id"]
    time.sleep(0.1)
    assert [item[1] for item in sim.get("/queue")["queue_running"]] == [second]
    assert sim.wait_exit(5) == -signal.SIGKILL
    assert not (sim.output_dir / "second_00001_.png").exists()

    sim.restart(["--render-time", "0"])
    assert sim.get("/history") == {}
    assert run(sim, image_graph("third"))["status"]["status_str"] == "success"


# A slowed route takes at least the delay; a route answering in less than the delay was not
# slowed. The delay is the trigger, so no bound below it depends on how busy the machine is.
def test_history_delay_slows_only_history(start_sim):
    sim = start_sim("--render-time", "0", "--history-delay", "2")
    prompt_id = sim.submit(image_graph("slow-history"))["prompt_id"]
    started = time.monotonic()
    sim.get(f"/history/{prompt_id}")
    assert time.monotonic() - started >= 2
    started = time.monotonic()
    sim.get("/queue")
    assert time.monotonic() - started < 2


def test_latency_slows_every_comfyui_route_but_not_the_controls(start_sim):
    sim = start_sim("--render-time", "0")
    sim.set_faults(latency=2)
    started = time.monotonic()
    sim.get("/prompt")
    assert time.monotonic() - started >= 2
    started = time.monotonic()
    sim.stats()
    assert time.monotonic() - started < 2


def test_vram_drops_while_a_prompt_runs_and_free_restores_it(start_sim):
    sim = start_sim("--render-time", "0.6", "--vram-total-mb", "24576", "--vram-free-mb", "20000")

    def device() -> dict[str, Any]:
        return sim.get("/system_stats")["devices"][0]  # type: ignore[no-any-return]

    assert (device()["vram_total"], device()["vram_free"]) == (24576 * MIB, 20000 * MIB)
    prompt_id = sim.submit(image_graph("vram"))["prompt_id"]
    time.sleep(0.2)
    assert device()["vram_free"] == (20000 - 6144) * MIB
    sim.wait_for_history(prompt_id)
    assert device()["vram_free"] == 20000 * MIB

    sim.set_faults(vram_free_mb=1500)  # a leak
    assert device()["vram_free"] == 1500 * MIB
    assert sim.post("/free", {"unload_models": True, "free_memory": True}) == (200, None)
    time.sleep(0.1)
    assert device()["vram_free"] == 20000 * MIB
    assert sim.stats()["free_calls"] == 1

    sim.set_faults(render_time="0")
    again = run(sim, image_graph("vram"))
    assert again["status"]["messages"][1][1]["nodes"] == []  # /free also emptied the cache


def test_a_cpu_device_can_be_simulated(start_sim):
    sim = start_sim("--device-type", "cpu")
    device = sim.get("/system_stats")["devices"][0]
    assert (device["name"], device["type"], device["index"]) == ("cpu", "cpu", None)


def test_fault_rates_are_reproducible_with_a_seed(start_sim):
    outcomes = []
    for _ in range(2):
        sim = start_sim("--render-time", "0", "--seed", "5", "--faults", '{"error": {"rate": 0.5}}')
        ids = [sim.submit(image_graph(f"seeded{n}", color=n))["prompt_id"] for n in range(10)]
        outcomes.append([sim.wait_for_history(i)["status"]["status_str"] for i in ids])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"success", "error"}


def test_a_dead_simulator_is_reported_with_its_log(start_sim):
    with pytest.raises(SimulatorError, match="render_time"):
        start_sim("--render-time", "bogus")


def test_duplicate_submissions_are_counted_per_prompt_id(start_sim):
    sim = start_sim("--render-time", "0")
    prompt_id = str(uuid.uuid4())
    sim.submit(image_graph("twice"), prompt_id=prompt_id)
    sim.submit(image_graph("twice"), prompt_id=prompt_id)
    assert sim.stats()["submissions"] == {prompt_id: 2}


def test_a_vram_leak_makes_big_renders_run_out_of_memory_until_free(start_sim):
    sim = start_sim("--render-time", "0")
    sim.set_faults(vram_free_mb=3000)
    event, error = last_message(run(sim, sdxl_graph("a big page", width=1024, height=1024)))
    assert (event, error["exception_type"], error["node_type"]) == (
        "execution_error",
        "torch.OutOfMemoryError",
        "KSampler",
    )

    sim.post("/free", {"unload_models": True})
    assert run(sim, sdxl_graph("a big page", width=1024, height=1024))["status"]["status_str"] == "success"
    assert sim.stats()["faults"] == {}  # a genuine OOM, not an injected one


def test_a_startup_delay_keeps_it_silent_at_start_and_after_a_restart_like_a_real_comfyui(start_sim):
    started = time.monotonic()
    sim = start_sim("--render-time", "0", "--startup-delay", "2")
    assert time.monotonic() - started >= 2
    sim.kill()
    restarted = time.monotonic()
    sim.restart()
    assert time.monotonic() - restarted >= 2
    assert sim.faults()["startup_delay"] == 2


def test_the_first_prompt_after_idling_ends_late_like_comfyuis_garbage_collection(start_sim):
    sim = start_sim("--render-time", "0", "--idle-gc-pause", "1.5", "--idle-gc-after", "0.5")
    time.sleep(0.6)  # idle for longer than idle_gc_after
    submitted = time.monotonic()
    sim.wait_for_history(sim.submit(image_graph("after-idle"))["prompt_id"], timeout=30)
    assert time.monotonic() - submitted >= 1.5


def test_continuous_work_also_pauses_once_per_collection_interval_like_comfyui(start_sim):
    sim = start_sim("--render-time", "0.2", "--idle-gc-pause", "0.5", "--idle-gc-after", "1")
    ids = [sim.submit(image_graph(f"busy-{n}", color=n))["prompt_id"] for n in range(8)]
    entries = [sim.wait_for_history(prompt_id, timeout=60) for prompt_id in ids]

    def stamp(entry: dict[str, Any], event: str) -> float:
        return next(data["timestamp"] for name, data in entry["status"]["messages"] if name == event) / 1000

    spans = sorted((stamp(e, "execution_start"), stamp(e, "execution_success")) for e in entries)
    paused = [start - end for (_, end), (start, _) in itertools.pairwise(spans) if start - end >= 0.5]
    # The first prompt ever ends with a collection, and 1.6 s of work holds at least one more.
    assert len(paused) >= 2
