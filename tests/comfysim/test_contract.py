"""The simulator answers like the real ComfyUI 0.3.64 whose exchanges are in tests/fixtures/comfyui.

Each test replays a captured exchange against a fresh simulator on a real socket and compares
field by field: same keys, same JSON types, same fixed strings. Ids, timestamps, counters, sids
and tracebacks are compared by type only. Before comparing, the ids the simulator made up are
swapped for the captured ones, so that the rest of each message must match exactly.
"""

from __future__ import annotations

import io
import json
import re
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from comfysim.testing import SimulatorProcess, first_mismatch, image_graph, running_simulator, sdxl_graph

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"
LOOSE = {"prompt_id", "timestamp", "sid", "number", "traceback", "client_id"}
INVALID = json.loads((CAPTURES / "invalid.json").read_text())
PROGRESS_TYPES = ("progress", "progress_state")


def swap(value: Any, ids: dict[str, str]) -> Any:
    """Replace the simulator's ids by the captured ones everywhere in a JSON value."""
    text = json.dumps(value)
    for ours, theirs in ids.items():
        text = text.replace(json.dumps(ours), json.dumps(theirs))
    return json.loads(text)


def assert_like(actual: Any, expected: Any, loose: set[str] = LOOSE) -> None:
    problem = first_mismatch(actual, expected, loose=loose)
    assert problem is None, problem


def assert_history_like(actual: dict[str, Any], expected: dict[str, Any], loose: set[str] = LOOSE) -> None:
    """Like assert_like for {prompt_id: entry}; the queue number inside `prompt` must only have
    the captured type (the counter depends on how many prompts came before)."""
    actual = json.loads(json.dumps(actual))
    for prompt_id, entry in expected.items():
        if actual.get(prompt_id):
            number = actual[prompt_id]["prompt"][0]
            assert type(number) is type(entry["prompt"][0]), f"{prompt_id}: number {number!r}"
            actual[prompt_id]["prompt"][0] = entry["prompt"][0]
    assert_like(actual, expected, loose)


def messages_of(captured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry["msg"] for entry in captured if entry["kind"] == "json"]


def without(messages: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] not in types]


def same_queue_numbers(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Queue items start with the queue number, whose value depends on earlier prompts: keep
    its type, take the captured value, so the rest of the item can be compared exactly."""
    actual = json.loads(json.dumps(actual))
    for key in ("queue_running", "queue_pending"):
        for ours, theirs in zip(actual[key], expected[key], strict=False):
            assert type(ours[0]) is type(theirs[0]), f"{key}: number {ours[0]!r} vs {theirs[0]!r}"
            ours[0] = theirs[0]
    return actual


def sorted_sets(value: Any) -> Any:
    """Sort the lists ComfyUI builds from Python sets, whose order is arbitrary."""
    if isinstance(value, dict):
        return {k: sorted(v) if k in ("executed", "current_outputs") else sorted_sets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sorted_sets(v) for v in value]
    return value


def post_prompt(sim: SimulatorProcess, **body: Any) -> requests.Response:
    return requests.post(sim.url + "/prompt", json=body, timeout=10)


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorProcess]:
    """One simulator for the tests that only validate (nothing runs long enough to interfere)."""
    with running_simulator(args=["--render-time", "0"]) as sim:
        yield sim


def test_a_page_renders_like_the_capture(sim, connect, capture):
    cap = capture("success")
    captured_id = cap["request_prompt_id"]
    entry = cap["history"][captured_id]
    client_id = entry["prompt"][3]["client_id"]
    ws = connect(sim, client_id)
    prompt_id = str(uuid.uuid4())

    response = post_prompt(
        sim, prompt=entry["prompt"][2], prompt_id=prompt_id, client_id=client_id, extra_data={"book_job": "job-42"}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert_like(swap(response.json(), {prompt_id: captured_id}), cap["post_response"])
    assert response.json()["number"] == 0

    ws.wait_done(prompt_id)
    assert_like(swap(ws.json_messages(), {prompt_id: captured_id}), messages_of(cap["ws"]))
    assert_history_like(swap(sim.get(f"/history/{prompt_id}"), {prompt_id: captured_id}), cap["history"])

    view = requests.get(
        sim.url + "/view", params={"filename": "page_00001_.png", "subfolder": "book", "type": "output"}, timeout=10
    )
    assert view.status_code == 200
    assert set(cap["view"]["headers"]) <= set(view.headers)
    assert view.headers["Content-Type"] == "image/png"
    assert view.headers["Content-Disposition"] == 'filename="page_00001_.png"'
    assert view.content[:8] == bytes.fromhex(cap["view"]["png_magic"])
    png = Image.open(io.BytesIO(view.content))
    assert png.size == (512, 512)
    assert json.loads(png.info["prompt"]) == entry["prompt"][2]


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_bad_request_is_answered_like_the_capture(shared_sim, case):
    expected = INVALID[case]
    if isinstance(expected["request"], str):
        response = requests.post(shared_sim.url + "/prompt", data=expected["request"], timeout=10)
    else:
        response = requests.post(shared_sim.url + "/prompt", json=expected["request"], timeout=10)

    assert response.status_code == expected["status"]
    assert response.headers["Content-Type"] == expected["content_type"]
    if isinstance(expected["body"], str):
        assert response.text == expected["body"]
    else:
        assert_like(response.json(), expected["body"])


def test_one_bad_output_drops_only_its_branch(shared_sim):
    request = INVALID["one_good_one_bad_output"]["request"]
    body = shared_sim.submit(request["prompt"], prompt_id=str(uuid.uuid4()))
    assert body["node_errors"]["3"]["dependent_outputs"] == ["4"]
    entry = shared_sim.wait_for_history(body["prompt_id"])

    assert entry["prompt"][4] == ["2"]
    assert list(entry["outputs"]) == ["2"]
    assert (shared_sim.output_dir / "good_00001_.png").exists()
    assert not list(shared_sim.output_dir.glob("bad_*"))


def test_invalid_prompts_still_use_up_numbers(shared_sim):
    first = shared_sim.submit(image_graph("numbers"))
    post_prompt(shared_sim, prompt={"1": {"class_type": "NoSuchNode", "inputs": {}}})
    third = shared_sim.submit(image_graph("numbers"))
    explicit = shared_sim.submit(image_graph("numbers"), number=7)
    # The server is shared: leave it idle, so that no later test sees these prompts run.
    for body in (first, third, explicit):
        shared_sim.wait_for_history(body["prompt_id"], timeout=60)

    assert third["number"] == first["number"] + 2
    assert explicit["number"] == 7.0 and isinstance(explicit["number"], float)


def test_read_only_routes_answer_like_the_capture(start_sim, capture):
    cap = capture("misc")
    sim = start_sim("--render-time", "0")
    # The capture's history held one failed LoadImage prompt without a client_id.
    upload = requests.post(
        sim.url + "/upload/image", files={"image": ("corrupt.png", b"not an image")}, timeout=10
    ).json()
    assert upload == {"name": "corrupt.png", "subfolder": "", "type": "input"}
    failed = sim.submit(cap["GET /history?max_items=1"]["body"]["4d93fe41-af98-4e7b-94bc-9db674ea4a1c"]["prompt"][2])
    sim.wait_for_history(failed["prompt_id"])

    history = swap(sim.get("/history?max_items=1"), {failed["prompt_id"]: "4d93fe41-af98-4e7b-94bc-9db674ea4a1c"})
    assert_history_like(history, cap["GET /history?max_items=1"]["body"], loose=LOOSE | {"exception_message"})
    message = history["4d93fe41-af98-4e7b-94bc-9db674ea4a1c"]["status"]["messages"][-1][1]["exception_message"]
    assert message.startswith("cannot identify image file '") and message.endswith("corrupt.png'\n")

    stats = sim.get("/system_stats")
    expected = cap["GET /system_stats"]["body"]
    assert_like(
        stats["system"],
        expected["system"],
        loose={"ram_total", "ram_free", "python_version", "pytorch_version", "argv"},
    )
    assert stats["system"]["argv"][-2:] == ["--render-time", "0"]
    assert stats["system"]["pytorch_version"].startswith("2.13.0+cu")
    assert set(stats["devices"][0]) == set(expected["devices"][0])
    assert stats["devices"][0]["name"] == "cuda:0 NVIDIA GeForce RTX 5060 Ti : cudaMallocAsync"
    assert (stats["devices"][0]["type"], stats["devices"][0]["index"]) == ("cuda", 0)
    assert stats["devices"][0]["vram_total"] == 16311 * 1024 * 1024

    for route in ("GET /queue", "GET /prompt", "GET /embeddings", "GET /models", "GET /features", "GET /api/prompt"):
        response = requests.get(sim.url + route.split(" ")[1], timeout=10)
        assert response.status_code == cap[route]["status"], route
        assert response.json() == cap[route]["body"], route
    assert sim.get("/models/checkpoints") == ["sd_xl_base_1.0.safetensors"]
    for route in ("GET /object_info/EmptyImage", "GET /object_info/SaveImage", "GET /history/not-a-real-id"):
        assert sim.get(route.split(" ")[1]) == cap[route]["body"], route
    load_image = sim.get("/object_info/LoadImage")["LoadImage"]
    assert load_image["input"]["required"]["image"] == [["corrupt.png"], {"image_upload": True}]
    assert {k: v for k, v in load_image.items() if k != "input"} == {
        k: v for k, v in cap["GET /object_info/LoadImage"]["body"]["LoadImage"].items() if k != "input"
    }
    assert sim.get("/object_info/NoSuchNode") == {}
    assert len(sim.get("/object_info")) == cap["GET /object_info"]["node_count"]

    for route in (
        "GET /models/nope",
        "GET /view?filename=nope.png&type=output",
        "GET /view?filename=../x.png",
        "GET /view?filename=x.png&type=bogus",
    ):
        response = requests.get(sim.url + route.split(" ")[1], timeout=10)
        assert (response.status_code, response.text) == (cap[route]["status"], ""), route

    for route in [r for r in cap if r.startswith("POST ")]:
        path, _, body = route[len("POST ") :].partition(" ")
        data = None if body in ("", "(no body)") else body
        response = requests.post(sim.url + path, data=data, timeout=10)
        assert (response.status_code, response.text) == (cap[route]["status"], cap[route]["body"]), route


def test_queue_priorities_deletes_and_interrupts_follow_the_capture(sim, connect, capture):
    cap = capture("queue_and_interrupt")
    running, pending = cap["queue_while_A_runs"]["queue_running"], cap["queue_while_A_runs"]["queue_pending"]
    items = {item[3]["job"]: item for item in running + pending}
    client_id = items["A"][3]["client_id"]
    ws = connect(sim, client_id)
    ours: dict[str, str] = {}
    numbers: dict[str, Any] = {}

    def submit(job: str, **fields: Any) -> None:
        graph = items[job][2]
        body = sim.submit(graph, client_id=client_id, extra_data={"job": job}, **fields)
        ours[job], numbers[job] = body["prompt_id"], body["number"]

    submit("A")
    ws.wait_for(lambda m: m.get("type") == "executing" and m["data"].get("node") == "2")
    submit("B")
    submit("C")
    submit("D-front", front=True)
    submit("E-number-1000", number=-1000)
    captured = {job: cap["ids"][job[0]] for job in ours}
    ids = {ours[job]: captured[job] for job in ours}

    assert [type(numbers[j]) for j in ("A", "B", "C", "D-front")] == [int] * 4
    assert numbers["D-front"] == -(numbers["C"] + 1)
    assert numbers["E-number-1000"] == -1000.0 and isinstance(numbers["E-number-1000"], float)

    queue = swap(sim.get("/queue"), ids)
    queue["queue_pending"].sort(key=lambda item: item[0])
    expected = json.loads(json.dumps(cap["queue_while_A_runs"]))
    expected["queue_pending"].sort(key=lambda item: item[0])
    assert_like(same_queue_numbers(queue, expected), expected)
    assert sim.get("/prompt") == cap["get_prompt_while_A_runs"]

    assert requests.post(sim.url + "/queue", json={"delete": [ours["C"]]}, timeout=10).status_code == 200
    queue = swap(sim.get("/queue"), ids)
    queue["queue_pending"].sort(key=lambda item: item[0])
    expected = json.loads(json.dumps(cap["queue_after_delete_C"]))
    expected["queue_pending"].sort(key=lambda item: item[0])
    assert_like(same_queue_numbers(queue, expected), expected)
    assert requests.post(sim.url + "/interrupt", json={"prompt_id": ours["B"]}, timeout=10).status_code == 200
    assert requests.post(sim.url + "/interrupt", json={"prompt_id": ours["A"]}, timeout=10).status_code == 200
    ws.wait_done(ours["B"])

    starts = [m["data"]["prompt_id"] for m in ws.json_messages() if m["type"] == "execution_start"]
    assert swap(starts, ids) == [cap["ids"][job] for job in cap["execution_start_order"]]
    assert sim.history(ours["C"]) == {}
    for job in ("A", "B", "D-front", "E-number-1000"):
        assert_history_like(swap(sim.get(f"/history/{ours[job]}"), ids), cap["history"][job[0]])
    assert_like(swap(without(ws.json_messages(), *PROGRESS_TYPES), ids), messages_of(cap["ws"]))


def test_an_identical_resubmission_is_served_from_cache(sim, connect, capture):
    cap = capture("cached")
    # The capture ran after another "book/page" prompt, so its counter was at 2.
    (sim.output_dir / "book").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(sim.output_dir / "book" / "page_00001_.png")
    graph = cap["first"]["history"][cap["first"]["post"]["prompt_id"]]["prompt"][2]
    client_id = cap["first"]["history"][cap["first"]["post"]["prompt_id"]]["prompt"][3]["client_id"]
    ws = connect(sim, client_id)

    for run in ("first", "second"):
        already = len(ws.json_messages())
        body = sim.submit(graph, client_id=client_id)
        ws.wait_done(body["prompt_id"])
        ids = {body["prompt_id"]: cap[run]["post"]["prompt_id"]}
        assert_like(swap(ws.json_messages()[already:], ids), messages_of(cap[run]["ws"]))
        assert_history_like(swap(sim.get(f"/history/{body['prompt_id']}"), ids), cap[run]["history"])
    assert sorted(p.name for p in (sim.output_dir / "book").iterdir()) == ["page_00001_.png", "page_00002_.png"]


def test_a_reconnecting_client_is_told_the_running_node(sim, connect, capture):
    cap = capture("reconnect")
    client_id = cap["after_reconnect_first_msgs"][0]["msg"]["data"]["sid"]
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 7}},
        "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "reconnect"}},
    }
    first = connect(sim, client_id)
    body = sim.submit(graph, client_id=client_id)
    first.wait_for(lambda m: m.get("type") == "executing" and m["data"].get("node") == "2")
    first.close()
    time.sleep(0.2)  # let the server see the old socket go before the new one registers

    second = connect(sim, client_id)
    second.wait_done(body["prompt_id"])
    ids = {body["prompt_id"]: cap["post"]["prompt_id"]}
    assert_like(
        swap(without(second.json_messages(), *PROGRESS_TYPES), ids), messages_of(cap["after_reconnect_first_msgs"])
    )


def test_prompt_ids_are_taken_verbatim_and_duplicates_both_run(sim, connect, capture):
    cap = capture("id_semantics")
    earlier = [sim.submit(image_graph(f"early{n}", color=n))["prompt_id"] for n in range(2)]
    response = post_prompt(sim, prompt=image_graph("verbatim"), prompt_id="page-7-attempt-2")
    assert response.status_code == cap["non_uuid_prompt_id"]["status"]
    assert_like(response.json(), cap["non_uuid_prompt_id"]["body"])
    sim.wait_for_history("page-7-attempt-2")

    ws = connect(sim, "dup-client")
    duplicate = str(uuid.uuid4())
    for prefix in ("dup1", "dup2"):
        assert sim.submit(image_graph(prefix), prompt_id=duplicate, client_id="dup-client")["prompt_id"] == duplicate
    done = {"type": "executing", "data": {"node": None, "prompt_id": duplicate}}
    ws.wait_for(lambda _: ws.json_messages().count(done) == 2)
    assert_like(
        swap([done, done], {duplicate: cap["duplicate_prompt_id"]["done_msgs"][0]["data"]["prompt_id"]}),
        cap["duplicate_prompt_id"]["done_msgs"],
    )
    assert sim.history(duplicate)["outputs"] == cap["duplicate_prompt_id"]["history_outputs"]

    assert list(sim.get("/history?max_items=2")) == ["page-7-attempt-2", duplicate]
    assert list(sim.get("/history?max_items=2&offset=0")) == earlier
    assert len(sim.get("/history")) == 4


def test_a_second_socket_with_the_same_client_id_takes_over(sim, connect, capture):
    cap = capture("id_semantics")["same_clientId_two_sockets"]
    first = connect(sim, "shared-client")
    second = connect(sim, "shared-client")
    body = sim.submit(image_graph("takeover"), client_id="shared-client")
    second.wait_done(body["prompt_id"])

    assert [m["type"] for m in first.json_messages()] == cap["first_socket_msg_types"]
    assert [m["type"] for m in second.json_messages()] == cap["second_socket_msg_types"]


def test_without_a_client_id_a_bystander_sees_only_progress_and_the_interrupt(sim, connect, capture):
    cap = capture("interrupt_no_client_id")
    captured_id = cap["post"]["prompt_id"]
    graph = cap["history"][captured_id]["prompt"][2]
    bystander = connect(sim)
    body = sim.submit(graph)
    bystander.wait_for(lambda m: m.get("type") == "progress")
    requests.post(sim.url + "/interrupt", timeout=10)
    entry = sim.wait_for_history(body["prompt_id"])
    time.sleep(0.1)  # the final status broadcast follows the history write

    ids = {body["prompt_id"]: captured_id}
    assert_history_like(swap({body["prompt_id"]: entry}, ids), cap["history"])
    assert_like(swap(without(bystander.json_messages(), *PROGRESS_TYPES), ids), messages_of(cap["bystander_ws"]))
    seen = {m["type"] for m in bystander.json_messages()}
    assert {"progress", "progress_state"} <= seen
    assert not seen & {"execution_start", "execution_cached", "executing", "executed", "execution_success"}


def test_uploads_and_runtime_errors_follow_the_capture(sim, connect, capture):
    cap = capture("runtime_errors")
    png = io.BytesIO()
    Image.new("RGBA", (32, 24), (10, 20, 30, 255)).save(png, format="PNG")

    def upload(name: str, data: bytes, **fields: str) -> list[Any]:
        response = requests.post(sim.url + "/upload/image", files={"image": (name, data)}, data=fields, timeout=10)
        return [response.status_code, response.json()]

    assert upload("ref.png", png.getvalue(), subfolder="book1") == cap["upload"]["real_png"]
    assert upload("corrupt.png", b"this is not a png") == cap["upload"]["corrupt_png"]
    assert upload("ref.png", png.getvalue(), subfolder="book1") == cap["upload"]["same_again_no_overwrite"]
    assert upload("ref.png", b"other bytes", subfolder="book1")[1]["name"] == "ref (1).png"

    for case in ("corrupt_image_in_LoadImage", "cpu_allocation_failure", "load_uploaded_subfolder_image_ok"):
        captured_id = cap[case]["post"]["prompt_id"]
        expected = cap[case]["history"][captured_id]
        client_id = expected["prompt"][3]["client_id"]
        ws = connect(sim, client_id)
        body = sim.submit(expected["prompt"][2], client_id=client_id)
        ws.wait_done(body["prompt_id"])
        ids = {body["prompt_id"]: captured_id}
        loose = LOOSE | {"exception_message"}
        assert_like(swap(ws.json_messages(), ids), messages_of(cap[case]["ws"]), loose=loose)
        assert_history_like(swap(sim.get(f"/history/{body['prompt_id']}"), ids), cap[case]["history"], loose=loose)
        if case == "cpu_allocation_failure":
            assert (
                sim.history(body["prompt_id"])["status"]["messages"][-1][1]["exception_message"]
                == (expected["status"]["messages"][-1][1]["exception_message"])
            )

    captured_id = cap["no_client_id_failure"]["post"]["prompt_id"]
    other = connect(sim)
    body = sim.submit(cap["no_client_id_failure"]["history"][captured_id]["prompt"][2])
    sim.wait_for_history(body["prompt_id"])
    time.sleep(0.1)
    ids = {body["prompt_id"]: captured_id}
    assert_like(swap(other.json_messages(), ids), messages_of(cap["no_client_id_failure"]["ws_seen_by_other_client"]))


def test_a_failing_node_stops_the_prompt_after_its_independent_sibling_ran(sim, connect, capture):
    cap = capture("sync_error")
    captured_id = cap["post"]["prompt_id"]
    expected = cap["history"][captured_id]
    client_id = expected["prompt"][3]["client_id"]
    ws = connect(sim, client_id)
    body = sim.submit(expected["prompt"][2], client_id=client_id)
    ws.wait_done(body["prompt_id"])

    ids = {body["prompt_id"]: captured_id}
    history = sorted_sets(swap(sim.get(f"/history/{body['prompt_id']}"), ids))
    history[captured_id]["prompt"][4].sort()
    expected_history = sorted_sets(cap["history"])
    expected_history[captured_id]["prompt"][4].sort()
    assert_history_like(history, expected_history)
    assert_like(sorted_sets(swap(ws.json_messages(), ids)), sorted_sets(messages_of(cap["ws"])))


def test_after_a_crash_and_restart_queue_and_history_are_empty(start_sim, capture):
    cap = capture("crash_resume")
    sim = start_sim("--render-time", "5")
    ids = [sim.submit(image_graph(f"crash{n}", color=n))["prompt_id"] for n in range(3)]
    queue = sim.get("/queue")
    assert [item[1] for item in queue["queue_running"]] == ids[:1]
    assert sorted(item[1] for item in queue["queue_pending"]) == sorted(ids[1:])

    sim.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.url + "/queue", timeout=2)
    sim.restart()

    after = {
        "history_per_id": {prompt_id: sim.get(f"/history/{prompt_id}") for prompt_id in ids},
        "queue": sim.get("/queue"),
        "history_all": sim.get("/history"),
    }
    assert after == swap(cap["after_restart"], dict(zip(cap["ids"], ids, strict=True)))


def test_the_websocket_greets_and_negotiates_feature_flags(sim, capture):
    cap = capture("ws_hello")
    with_flags = sim.connect_ws("my-fixed-client-id", feature_flags=True)
    with_flags.wait_for(lambda m: m["type"] == "feature_flags")
    anonymous = sim.connect_ws()
    anonymous.wait_for(lambda m: m["type"] == "status")
    try:
        assert with_flags.json_messages() == cap["with_client_id_and_feature_flags"]
        assert_like(anonymous.json_messages(), cap["without_client_id"])
        assert re.fullmatch(r"[0-9a-f]{32}", anonymous.json_messages()[0]["data"]["sid"])
    finally:
        with_flags.close()
        anonymous.close()


def test_a_slow_node_reports_progress_at_a_bounded_rate(sim, connect, capture):
    cap = capture("progress")
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3}},
        "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sleep"}},
    }
    ws = connect(sim, "progress-client")
    body = sim.submit(graph, client_id="progress-client")
    ws.wait_done(body["prompt_id"])
    messages = ws.json_messages()
    progress = [m for m in messages if m["type"] == "progress"]

    ids = {body["prompt_id"]: cap["first_progress"][0]["msg"]["data"]["prompt_id"]}
    assert_like(swap(progress[0], ids), cap["first_progress"][0]["msg"], loose=LOOSE | {"value"})
    assert_like(swap(progress[-1], ids), cap["last_progress"][-1]["msg"])
    assert 5 <= len(progress) <= 25
    values = [m["data"]["value"] for m in progress]
    assert values == sorted(values)
    # Every progress message follows the progress_state that carries the same value.
    for index, message in enumerate(messages):
        if message["type"] == "progress":
            assert messages[index - 1]["type"] == "progress_state"
    assert_like(
        swap(without(messages, *PROGRESS_TYPES), ids),
        [m["msg"] for m in cap["non_progress_msgs"]],
        loose=LOOSE,
    )


def test_model_free_workflows_give_the_captured_outputs(sim, capture):
    cap = capture("model_free_workflows")
    for name in ("page_chain_model_free", "latent_and_text_outputs"):
        body = sim.submit(cap[name]["prompt"])
        entry = sim.wait_for_history(body["prompt_id"])
        assert entry["status"]["status_str"] == cap[name]["status_str"]
        # Independent outputs run in no fixed order: the real server gave ["4", "2"] for ["2", "4"].
        assert sorted(entry["outputs"]) == sorted(cap[name]["history_outputs"]), name
        assert_like(entry["outputs"], cap[name]["history_outputs"], loose={"filename"})

    outputs = sim.history(body["prompt_id"])["outputs"]
    assert outputs["4"]["text"] == ["hello page"]
    latent = sim.output_dir / "latents" / outputs["2"]["latents"][0]["filename"]
    header_size = struct.unpack("<Q", latent.read_bytes()[:8])[0]
    header = json.loads(latent.read_bytes()[8 : 8 + header_size])
    assert header["latent_tensor"]["shape"] == [1, 4, 8, 8]
    assert "prompt" in header["__metadata__"]

    page = sim.wait_for_history(sim.submit(cap["page_chain_model_free"]["prompt"])["prompt_id"])["outputs"]
    preview = page["6"]["images"][0]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", preview["filename"])
    saved = Image.open(sim.output_dir / "book-7" / page["5"]["images"][0]["filename"])
    assert saved.size == (768, 1086)


def test_an_sdxl_graph_validates_samples_with_step_progress_and_caches(start_sim, connect):
    sim = start_sim("--render-time", "0.3")
    ws = connect(sim, "sdxl")
    graph = sdxl_graph("a lighthouse at dusk", prefix="book-1/page-001", steps=12, width=512, height=768)
    body = sim.submit(graph, client_id="sdxl")
    ws.wait_done(body["prompt_id"])
    entry = sim.history(body["prompt_id"])

    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["9"]["images"] == [
        {"filename": "page-001_00001_.png", "subfolder": "book-1", "type": "output"}
    ]
    assert Image.open(sim.output_dir / "book-1" / "page-001_00001_.png").size == (512, 768)
    progress = [m["data"] for m in ws.json_messages() if m["type"] == "progress"]
    assert progress and all(p["node"] == "3" and p["max"] == 12 and isinstance(p["value"], int) for p in progress)
    assert progress[-1]["value"] == 12 and len(progress) <= 12

    again = sim.submit(graph, client_id="sdxl")
    ws.wait_done(again["prompt_id"])
    cached = [m for m in ws.json_messages() if m["type"] == "execution_cached"][-1]
    assert sorted(cached["data"]["nodes"]) == sorted(graph)
    assert sim.history(again["prompt_id"])["outputs"] == entry["outputs"]


def test_a_node_the_simulator_cannot_run_fails_at_run_time(shared_sim):
    graph = image_graph("crop")
    graph["3"] = {"class_type": "ImageCrop", "inputs": {"image": ["1", 0], "width": 8, "height": 8, "x": 0, "y": 0}}
    graph["2"]["inputs"]["images"] = ["3", 0]
    entry = shared_sim.wait_for_history(shared_sim.submit(graph)["prompt_id"])

    error = entry["status"]["messages"][-1]
    assert error[0] == "execution_error"
    assert error[1]["exception_type"] == "RuntimeError"
    assert error[1]["exception_message"] == "simulator does not implement ImageCrop\n"
    assert error[1]["node_id"] == "3"


def test_websocket_image_saves_stream_binary_frames(sim, connect, capture):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 1}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    # As captured: a client without preview metadata first, then one with it (EmptyImage cached).
    for flags in (False, True):
        cap = capture("binary_frames")[f"feature_flags_supports_preview_metadata={flags}"]
        ws = connect(sim, f"binary-{flags}", feature_flags=flags)
        if flags:
            ws.wait_for(lambda m: isinstance(m, dict) and m["type"] == "feature_flags")
        body = sim.submit(graph, client_id=f"binary-{flags}")
        ws.wait_done(body["prompt_id"])

        frames = [m for m in ws.messages if isinstance(m, bytes)]
        assert [struct.unpack(">I", f[:4])[0] for f in frames] == [c["event_type"] for c in cap["binary_frames"]]
        kinds = [
            "binary" if isinstance(m, bytes) else m["type"]
            for m in ws.messages
            if isinstance(m, bytes) or m["type"] != "progress_state"
        ]
        expected = [m for m in cap["all_msgs"] if m["kind"] != "closed"]
        assert kinds == ["binary" if m["kind"] == "binary" else m["msg"]["type"] for m in expected]
        assert sim.history(body["prompt_id"])["outputs"] == {}
    size = struct.unpack(">I", frames[0][4:8])[0]
    meta = json.loads(frames[0][8 : 8 + size])
    assert set(meta) == {"node_id", "prompt_id", "display_node_id", "parent_node_id", "real_node_id", "image_type"}
    assert frames[0][8 + size : 16 + size] == bytes.fromhex("89504e470d0a1a0a")


def test_the_newer_api_has_jobs_and_stricter_ids(start_sim):
    sim = start_sim("--api-version", "0.38", "--render-time", "0", "--test-nodes")
    refused = post_prompt(sim, prompt=image_graph("x"), prompt_id="page-7-attempt-2")
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_prompt_id"
    missing = post_prompt(sim, prompt={"1": {"class_type": "NoSuchNode", "inputs": {}, "_meta": {"title": "Fancy"}}})
    assert missing.json()["error"]["type"] == "missing_node_type"
    assert missing.json()["error"]["extra_info"] == {"node_id": "1", "class_type": "NoSuchNode", "node_title": "Fancy"}

    done = sim.submit(image_graph("jobs"), prompt_id=str(uuid.uuid4()))
    sim.wait_for_history(done["prompt_id"])
    sleeping = image_graph("sleeping")
    sleeping["3"] = {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 5.0}}
    sleeping["2"]["inputs"]["images"] = ["3", 0]
    running = sim.submit(sleeping)
    waiting = sim.submit(image_graph("waiting", color=5))
    time.sleep(0.2)

    listing = sim.get("/api/jobs?sort_order=asc")
    assert listing["pagination"] == {"offset": 0, "limit": None, "total": 3, "has_more": False}
    assert {job["id"]: job["status"] for job in listing["jobs"]} == {
        done["prompt_id"]: "completed",
        running["prompt_id"]: "in_progress",
        waiting["prompt_id"]: "pending",
    }
    detail = sim.get(f"/api/jobs/{done['prompt_id']}")
    assert {"outputs", "execution_status", "workflow", "outputs_count", "preview_output"} <= set(detail)
    assert detail["outputs_count"] == 1 and "create_time" in detail

    assert sim.post(f"/api/jobs/{waiting['prompt_id']}/cancel") == (200, {"cancelled": True})
    assert sim.post(f"/api/jobs/{running['prompt_id']}/cancel") == (200, {"cancelled": True})
    sim.wait_for_history(running["prompt_id"])
    assert sim.get(f"/api/jobs/{running['prompt_id']}")["status"] == "cancelled"
    assert sim.post(f"/api/jobs/{waiting['prompt_id']}/cancel") == (200, {"cancelled": False})
    assert requests.get(sim.url + f"/api/jobs/{uuid.uuid4()}", timeout=10).status_code == 404
    assert requests.get(sim.url + "/api/jobs?status=bogus", timeout=10).status_code == 400
    status, body = sim.post("/api/jobs/cancel", {"job_ids": ["not-a-uuid"]})
    assert status == 400 and body["invalid_ids"] == ["not-a-uuid"]


def test_the_0_3_64_server_has_no_jobs_api(shared_sim):
    assert requests.get(shared_sim.url + "/api/jobs", timeout=10).status_code == 404


def test_an_uploaded_image_loads_and_frames_save_as_one_animated_webp(sim):
    """Issue 15's model-free nodes: /upload/image into input/, LoadImage reads it, ImageBatch
    joins frames, SaveAnimatedWEBP writes them as one animated WebP listed under "images" with
    "animated": [true]. test_real_contract.py runs this against the real ComfyUI too."""
    picture = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(picture, "PNG")
    uploaded = requests.post(
        sim.url + "/upload/image",
        files={"image": ("contract-frame.png", picture.getvalue(), "image/png")},
        data={"type": "input", "subfolder": "contract", "overwrite": "true"},
        timeout=30,
    )
    assert uploaded.status_code == 200
    assert uploaded.json() == {"name": "contract-frame.png", "subfolder": "contract", "type": "input"}
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "contract/contract-frame.png"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 255}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["3", 0],
                "filename_prefix": f"contract/anim-{uuid.uuid4().hex[:8]}",
                "fps": 4.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    entry = sim.wait_for_history(sim.submit(graph)["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "success"
    output = entry["outputs"]["4"]
    assert sorted(output) == ["animated", "images"] and output["animated"] == [True]
    [listed] = output["images"]
    assert (
        listed["type"] == "output" and listed["subfolder"] == "contract" and listed["filename"].endswith("_00001_.webp")
    )
    with Image.open(sim.output_dir / "contract" / listed["filename"]) as image:
        assert image.format == "WEBP" and image.n_frames == 2 and image.size == (96, 64)
        r, g, b = image.convert("RGB").getpixel((48, 32))
        assert r > 150 and g < 80
        image.seek(1)  # the second frame: the blue EmptyImage, rescaled to the first frame's size
        r, g, b = image.convert("RGB").getpixel((48, 32))
        assert b > 150 and r < 80
