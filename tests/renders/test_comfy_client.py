"""The ComfyUI client against the simulator on a real socket: every error kind, the WebSocket
and its fallbacks, and the captured payload shapes."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from renders.comfy import ComfyClient, ComfyError, ErrorKind, OutputImage
from renders.workflows import template_load
from tests.conftest import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"


def page_graph(prompt: str = "a fox under a lantern", *, seed: int = 7) -> dict[str, Any]:
    prefix = f"test/page-{uuid.uuid4().hex[:8]}"
    return template_load("model-free").fill(
        prompt=prompt, negative_prompt="", seed=seed, filename_prefix=prefix, width=256, height=256
    )


def client_for(sim: Any, **kwargs: Any) -> ComfyClient:
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("poll_interval", 0.5)
    return ComfyClient(sim.url, **kwargs)


def render(client: ComfyClient, graph: dict[str, Any], *, timeout: float = 20) -> Any:
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(graph, prompt_id=prompt_id)
        return watcher.wait(prompt_id, timeout=timeout)


def test_it_renders_a_page_and_fetches_the_image(simulator):
    client = client_for(simulator)
    result = render(client, page_graph())
    assert result.entry.status == "success"
    assert result.exit_reason == "success"  # seen on the WebSocket, not by polling
    [image] = result.entry.images_of("6")
    assert image.type == "output" and image.subfolder.startswith("test")
    data = client.view(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.entry.started_at_ms and result.entry.finished_at_ms >= result.entry.started_at_ms


def test_no_websocket_outlives_its_wait(simulator):
    """ComfyUI's one message loop waits on every socket it broadcasts to; a socket left open and
    unread between pages would, in time, stop every client's events on that instance."""
    client = client_for(simulator)
    for prompt in ("page one", "page two"):
        assert render(client, page_graph(prompt)).entry.status == "success"
        assert wait_for(lambda: simulator.stats()["ws_open"] == 0, timeout=5, message="a socket stayed open")
    with pytest.raises(ComfyError), client.watch():
        assert simulator.stats()["ws_open"] == 1
        client.submit({"1": {"class_type": "NoSuchNode", "inputs": {}}}, prompt_id=str(uuid.uuid4()))
    assert wait_for(lambda: simulator.stats()["ws_open"] == 0, timeout=5, message="a socket stayed open")


def test_a_system_stats_reading_is_reused_only_within_max_age(simulator, monkeypatch):
    client = client_for(simulator)
    reads: list[float] = []
    real_read = client._read_system_stats

    def counted_read() -> Any:
        reads.append(time.monotonic())
        return real_read()

    monkeypatch.setattr(client, "_read_system_stats", counted_read)
    first = client.system_stats()
    assert client.system_stats(max_age=60) is first and len(reads) == 1
    assert client.system_stats() is not first and len(reads) == 2  # max_age 0: always a fresh one
    time.sleep(0.05)
    client.system_stats(max_age=0.01)
    assert len(reads) == 3


def test_a_400_is_a_validation_error_naming_the_node(simulator):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(ComfyError) as caught:
        client_for(simulator).submit(graph, prompt_id=str(uuid.uuid4()))
    error = caught.value
    assert error.kind is ErrorKind.VALIDATION and not error.retryable
    assert (error.node_id, error.node_type) == ("1", "EmptyImage")
    assert "Failed to convert an input value to a INT value" in error.message
    assert error.details["error_type"] == "prompt_outputs_failed_validation"


def test_a_200_with_node_errors_is_a_validation_error_and_the_prompt_is_taken_off_the_queue(simulator):
    graph = page_graph()
    # A second output fed by an invalid node: ComfyUI accepts the graph and drops that branch.
    graph["10"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}}
    graph["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "x"}}
    simulator.set_faults(render_time="2")
    client = client_for(simulator)
    prompt_id = str(uuid.uuid4())
    with pytest.raises(ComfyError) as caught:
        client.submit(graph, prompt_id=prompt_id)
    assert caught.value.kind is ErrorKind.VALIDATION
    assert caught.value.node_id == "10"
    assert prompt_id not in client.queue().pending


def test_a_gpu_out_of_memory_is_an_oom_error(simulator):
    result = render(client_for(simulator), page_graph("a huge page [sim:oom]"))
    error = result.entry.error
    assert result.entry.status == "error"
    assert error.kind is ErrorKind.OOM and error.retryable
    assert error.exception_type in ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError")
    assert error.message.startswith("ComfyUI ran out of GPU memory on node")
    assert "TIPS" not in error.message


def test_a_node_that_raises_is_an_execution_error(simulator):
    result = render(client_for(simulator), page_graph("a page [sim:error]"))
    error = result.entry.error
    assert error.kind is ErrorKind.EXECUTION and error.exception_type == "RuntimeError"
    assert error.node_id and error.node_type


def test_a_hanging_prompt_times_out_and_is_cancelled_for_sure(simulator):
    client = client_for(simulator)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(page_graph("a page [sim:hang]"), prompt_id=prompt_id)
        with pytest.raises(ComfyError) as caught:
            watcher.wait(prompt_id, timeout=1.5)
    assert caught.value.kind is ErrorKind.TIMEOUT and caught.value.retryable
    assert client.cancel(prompt_id) is True
    entry = client.history(prompt_id)
    assert entry is not None and entry.status == "interrupted"
    assert entry.error.kind is ErrorKind.INTERRUPTED


def test_a_pending_prompt_is_cancelled_by_deleting_it(simulator):
    client = client_for(simulator)
    blocker, pending = str(uuid.uuid4()), str(uuid.uuid4())
    client.submit(page_graph("a page [sim:hang]"), prompt_id=blocker)
    client.submit(page_graph(), prompt_id=pending)
    assert client.locate(pending).state == "pending"
    assert client.cancel(pending) is True
    assert client.locate(pending).state == "absent"  # deleted prompts never reach history
    assert client.locate(blocker).state == "running"
    client.cancel(blocker)


def test_an_unreachable_server_is_unavailable(unused_port):
    client = ComfyClient(f"http://127.0.0.1:{unused_port}", timeout=1)
    with pytest.raises(ComfyError) as caught:
        client.system_stats()
    assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.retryable


def test_a_server_that_never_answers_is_unavailable_after_the_timeout(silent_server):
    client = ComfyClient(silent_server, timeout=0.5)
    with pytest.raises(ComfyError) as caught:
        client.queue()
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert "no answer" in caught.value.message


def test_a_503_is_unavailable(simulator):
    simulator.set_faults(unavailable={"count": 1})
    with pytest.raises(ComfyError) as caught:
        client_for(simulator).submit(page_graph(), prompt_id=str(uuid.uuid4()))
    assert caught.value.kind is ErrorKind.UNAVAILABLE and "503" in caught.value.message


def test_garbage_from_comfyui_is_a_protocol_error(simulator):
    simulator.set_faults(garbage={"count": 1})
    with pytest.raises(ComfyError) as caught:
        client_for(simulator).submit(page_graph(), prompt_id=str(uuid.uuid4()))
    assert caught.value.kind is ErrorKind.PROTOCOL and caught.value.retryable
    assert "not JSON" in caught.value.message


def test_a_dropped_websocket_is_reconnected_and_the_page_still_finishes(simulator):
    simulator.set_faults(render_time="1.0")
    result = render(client_for(simulator), page_graph("a page [sim:ws_drop]"))
    assert result.entry.status == "success"
    assert result.ws_reconnects >= 1


def test_history_polling_finds_the_end_when_the_websocket_is_gone(simulator):
    client = client_for(simulator, poll_interval=0.2)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        watcher.close()
        client.submit(page_graph(), prompt_id=prompt_id)
        # Point the reconnects at nothing, so only polling can see the end.
        watcher.connect = lambda: (_ for _ in ()).throw(ComfyError(ErrorKind.UNAVAILABLE, "no ws"))  # type: ignore[method-assign]
        result = watcher.wait(prompt_id, timeout=10)
    assert result.entry.status == "success"
    assert result.exit_reason == "postExecution" and result.history_attempts >= 1


def test_a_prompt_lost_in_a_comfyui_restart_is_reported_as_lost(simulator):
    simulator.set_faults(render_time="3")
    client = client_for(simulator, poll_interval=0.3)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(page_graph(), prompt_id=prompt_id)
        threading.Timer(0.5, simulator.kill).start()
        threading.Timer(0.8, simulator.restart).start()
        with pytest.raises(ComfyError) as caught:
            watcher.wait(prompt_id, timeout=20)
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert caught.value.details.get("lost") is True


def test_a_server_that_stays_down_ends_the_wait_after_the_grace_period(simulator):
    simulator.set_faults(render_time="5")
    client = client_for(simulator, poll_interval=0.2, unreachable_grace=1.0)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(page_graph(), prompt_id=prompt_id)
        simulator.kill()
        with pytest.raises(ComfyError) as caught:
            watcher.wait(prompt_id, timeout=20)
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert caught.value.details["exit_reason"] == "attemptLimit"


def test_on_tick_runs_while_waiting_and_can_stop_the_wait(simulator):
    simulator.set_faults(render_time="3")
    client = client_for(simulator)
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            raise RuntimeError("superseded")

    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(page_graph(), prompt_id=prompt_id)
        with pytest.raises(RuntimeError, match="superseded"):
            watcher.wait(prompt_id, timeout=10, on_tick=tick, tick_interval=0.1)
    assert len(ticks) == 3
    client.cancel(prompt_id)


def test_it_reads_system_stats_in_megabytes(simulator):
    simulator.set_faults(vram_total_mb=16311, vram_free_mb=9000)
    stats = client_for(simulator).system_stats()
    assert stats.gpu is not None and stats.gpu.type == "cuda"
    assert stats.gpu.vram_total_mb == 16311
    assert 8000 <= stats.gpu.vram_free_mb <= 9000
    assert stats.comfyui_version == "0.3.64"


def test_free_is_sent_and_counted(simulator):
    client_for(simulator).free()
    assert simulator.stats()["free_calls"] == 1


def test_the_jobs_api_is_used_only_where_the_server_has_it(simulator, tmp_path):
    from comfysim.testing import running_simulator

    assert client_for(simulator).has_jobs_api() is False
    with running_simulator(output_dir=tmp_path / "new", args=["--api-version", "0.38"]) as newer:
        client = client_for(newer)
        assert client.has_jobs_api() is True
        prompt_id = str(uuid.uuid4())
        client.submit(page_graph("a page [sim:hang]"), prompt_id=prompt_id)
        assert client.job_status(prompt_id) in ("pending", "in_progress")
        assert client.cancel(prompt_id) is True
        assert client.job_status(prompt_id) == "cancelled"


# --- parsing the captured payloads -------------------------------------------------------------


def captured(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_a_cpu_allocation_failure_is_an_execution_error_not_oom():
    data = captured("runtime_errors.json")["cpu_allocation_failure"]["history"]
    [(prompt_id, item)] = data.items()
    entry = ComfyClient("http://x")._parse_history(prompt_id, item)
    assert entry.status == "error" and entry.error.kind is ErrorKind.EXECUTION
    assert entry.error.exception_type == "RuntimeError" and entry.error.node_type == "EmptyImage"


def test_an_unreadable_input_image_is_not_worth_retrying():
    data = captured("runtime_errors.json")["corrupt_image_in_LoadImage"]["history"]
    [(prompt_id, item)] = data.items()
    error = ComfyClient("http://x")._parse_history(prompt_id, item).error
    assert error.kind is ErrorKind.EXECUTION and error.exception_type == "PIL.UnidentifiedImageError"
    assert not error.retryable


@pytest.mark.parametrize(
    ("exception_type", "message"),
    [
        ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB\n"),
        ("torch.cuda.OutOfMemoryError", "CUDA out of memory.\n"),
        ("torch.AcceleratorError", "CUDA error: out of memory\n"),
        ("RuntimeError", "boom\nThis error means you ran out of memory on your GPU.\n\nTIPS: ...\n"),
    ],
)
def test_every_oom_shape_is_classified_as_oom(exception_type: str, message: str):
    error = ComfyClient("http://x").execution_error(
        {"node_id": "3", "node_type": "KSampler", "exception_type": exception_type, "exception_message": message}
    )
    assert error.kind is ErrorKind.OOM
    assert "node 3 (KSampler)" in error.message


def test_an_interrupted_history_entry_is_an_interrupted_error():
    data = captured("interrupt_no_client_id.json")["history"]
    [(prompt_id, item)] = data.items()
    entry = ComfyClient("http://x")._parse_history(prompt_id, item)
    assert entry.status == "interrupted" and entry.error.kind is ErrorKind.INTERRUPTED


def test_a_history_entry_of_the_wrong_shape_is_a_protocol_error():
    with pytest.raises(ComfyError) as caught:
        ComfyClient("http://x")._parse_history("p", {"status": {"status_str": "??", "messages": []}})
    assert caught.value.kind is ErrorKind.PROTOCOL


SUCCESS = {"status_str": "success", "completed": True, "messages": []}


@pytest.mark.parametrize(
    "entry",
    [
        {"status": SUCCESS, "outputs": ["9"]},  # outputs as a list
        {"status": SUCCESS, "outputs": {"9": ["images"]}},
        {"status": SUCCESS, "outputs": {"9": {"images": "page.png"}}},
        {"status": SUCCESS, "outputs": {"9": {"images": [{"name": "page.png"}]}}},
        {"status": {**SUCCESS, "messages": 5}},
    ],
    ids=["outputs-list", "output-list", "images-string", "image-without-filename", "messages-number"],
)
def test_a_malformed_history_entry_is_a_protocol_error(canned_server, entry: dict[str, Any]):
    url = canned_server({"/history/p": (200, {}, json.dumps({"p": entry}).encode())})
    with pytest.raises(ComfyError) as caught:
        ComfyClient(url, timeout=5).history("p")
    assert caught.value.kind is ErrorKind.PROTOCOL and "unexpected shape" in caught.value.message


def test_view_reads_no_more_than_the_image_limit(canned_server):
    url = canned_server({"/view": (200, {}, b"x" * 5000)})
    client = ComfyClient(url, timeout=5, max_image_bytes=1000)
    with pytest.raises(ComfyError) as caught:
        client.view(OutputImage("9", "page.png", "", "output"))
    assert caught.value.kind is ErrorKind.PROTOCOL and "COMFY_MAX_IMAGE_MB" in caught.value.message
    assert ComfyClient(url, timeout=5, max_image_bytes=5000).view(OutputImage("9", "page.png", "", "output")) == (
        b"x" * 5000
    )


def test_a_redirect_is_a_protocol_error_and_is_not_followed(canned_server):
    elsewhere = canned_server({"/view": (200, {}, b"not ours")})
    url = canned_server({"/view": (302, {"Location": elsewhere + "/view"}, b"")})
    with pytest.raises(ComfyError) as caught:
        ComfyClient(url, timeout=5).view(OutputImage("9", "page.png", "", "output"))
    assert caught.value.kind is ErrorKind.PROTOCOL and "302" in caught.value.message
    assert canned_server.requests == ["/view"]  # the second server was never asked


@pytest.mark.parametrize(
    ("node", "says"),
    [
        ({"class_type": "NoSuchNode", "inputs": {}}, "Cannot execute because node NoSuchNode does not exist (node 2)"),
        ({"inputs": {}}, "Cannot execute because a node is missing the class_type property (node 2)"),
    ],
)
def test_a_graph_error_keeps_its_node_id(simulator, node: dict[str, Any], says: str):
    with pytest.raises(ComfyError) as caught:
        client_for(simulator).submit({"2": node}, prompt_id=str(uuid.uuid4()))
    assert caught.value.kind is ErrorKind.VALIDATION
    assert caught.value.node_id == "2" and caught.value.message == says


def test_the_timeout_message_names_the_limit_not_what_was_left_of_it(simulator):
    client = client_for(simulator)
    prompt_id = str(uuid.uuid4())
    with client.watch() as watcher:
        client.submit(page_graph("a page [sim:hang]"), prompt_id=prompt_id)
        with pytest.raises(ComfyError) as caught:
            watcher.wait(prompt_id, timeout=1.25, limit="COMFY_RENDER_TIMEOUT_SEC (600 s)")
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert caught.value.message == f"prompt {prompt_id} did not finish within COMFY_RENDER_TIMEOUT_SEC (600 s)"
    client.cancel(prompt_id)


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server():
    """Accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


class CannedServer:
    """HTTP servers that answer each path with a fixed (status, headers, body), and record the
    paths every one of them was asked for."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.servers: list[ThreadingHTTPServer] = []

    def __call__(self, answers: dict[str, tuple[int, dict[str, str], bytes]]) -> str:
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                requests.append(path)
                status, headers, body = answers.get(path, (404, {}, b""))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def canned_server():
    servers = CannedServer()
    yield servers
    for server in servers.servers:
        server.shutdown()
        server.server_close()
