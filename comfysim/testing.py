"""Helpers for tests that need a ComfyUI: a real simulator process on a real socket.

    with running_simulator(args=["--render-time", "0.2"]) as sim:
        requests.post(sim.url + "/prompt", json={...})
        sim.set_faults(oom={"count": 1})
        sim.kill()        # like kill -9: queue and history are gone
        sim.restart()     # same port, same output directory

Also here: a small WebSocket recorder and `first_mismatch`, which compares a response with a
captured one field by field and names the first field that differs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0


class SimulatorError(RuntimeError):
    pass


def _request(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read()


@dataclass
class SimulatorProcess:
    port: int
    output_dir: Path
    input_dir: Path
    temp_dir: Path
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, client_id: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?clientId={client_id}" if client_id else "")

    # --- HTTP ----------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> Any:
        status, body = _request("GET", self.url + path, timeout=timeout)
        if status != 200:
            raise SimulatorError(f"GET {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def post(self, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        status, raw = _request("POST", self.url + path, {} if body is None else body, timeout=timeout)
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def submit(self, prompt: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """POST /prompt and return the 200 body; raise on anything else."""
        status, body = self.post("/prompt", {"prompt": prompt, **fields})
        if status != 200:
            raise SimulatorError(f"POST /prompt answered {status}: {body}")
        assert isinstance(body, dict)
        return body

    def history(self, prompt_id: str) -> dict[str, Any]:
        entry = self.get(f"/history/{prompt_id}")
        assert isinstance(entry, dict)
        return entry.get(prompt_id, {})  # type: ignore[no-any-return]

    def wait_for_history(self, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry:
                return entry
            time.sleep(0.02)
        raise SimulatorError(f"prompt {prompt_id} did not finish within {timeout}s")

    # --- /sim/ controls -----------------------------------------------------------------------

    def set_faults(self, **config: Any) -> dict[str, Any]:
        status, body = self.post("/sim/faults", config)
        if status != 200:
            raise SimulatorError(f"POST /sim/faults answered {status}: {body}")
        assert isinstance(body, dict)
        return body

    def faults(self) -> dict[str, Any]:
        return self.get("/sim/faults")  # type: ignore[no-any-return]

    def reset(self) -> dict[str, Any]:
        status, body = self.post("/sim/reset")
        assert status == 200 and isinstance(body, dict)
        return body

    def stats(self) -> dict[str, Any]:
        return self.get("/sim/stats")  # type: ignore[no-any-return]

    # --- the process --------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, like `kill -9`: whatever was queued or in history is lost."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, args: Iterable[str] | None = None, *, timeout: float = START_TIMEOUT) -> None:
        """Start again on the same port and directories (optionally with other arguments); wait
        up to ``timeout`` for it to answer (longer with a --startup-delay)."""
        self.kill()
        if args is not None:
            self.args = list(args)
        self.process = _spawn(self.port, self, port_file=None)
        _wait_healthy(self, port_file=None, timeout=timeout)

    def connect_ws(self, client_id: str | None = None, *, feature_flags: bool = False) -> WsRecorder:
        return WsRecorder(self.ws_url(client_id), feature_flags=feature_flags)


def _command(port: int, sim: SimulatorProcess, port_file: Path | None) -> list[str]:
    command = [sys.executable, "-m", "comfysim", "--port", str(port)]
    if port_file is not None:
        command += ["--port-file", str(port_file)]
    command += ["--output-directory", str(sim.output_dir), "--input-directory", str(sim.input_dir)]
    command += ["--temp-directory", str(sim.temp_dir)]
    return command + list(sim.args)


def _spawn(port: int, sim: SimulatorProcess, port_file: Path | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # The package must be importable however the caller's tree is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    with sim.log_path.open("ab") as log:
        return subprocess.Popen(
            _command(port, sim, port_file), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_healthy(sim: SimulatorProcess, port_file: Path | None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sim.alive():
            raise SimulatorError(f"comfysim exited with {sim.process.returncode}:\n{sim.log()[-3000:]}")
        if port_file is not None:
            if not port_file.exists():
                time.sleep(0.01)
                continue
            sim.port = int(port_file.read_text())
            port_file = None
        try:
            status, _ = _request("GET", sim.url + "/system_stats", timeout=2)
            if status == 200:
                # Make sure it is our process answering, not a leftover on the same port.
                status, body = _request("GET", sim.url + "/sim/stats", timeout=2)
                if status == 200 and json.loads(body).get("pid") == sim.process.pid:
                    return
        except OSError:
            pass
        time.sleep(0.01)
    sim.kill()
    raise SimulatorError(f"comfysim did not answer within {timeout}s:\n{sim.log()[-3000:]}")


@contextlib.contextmanager
def running_simulator(
    *, port: int | None = None, output_dir: Path | None = None, args: Iterable[str] = ()
) -> Iterator[SimulatorProcess]:
    """Run `python -m comfysim` as a subprocess until the block ends.

    Without `port` the simulator binds a free port itself (no race with other tests). Input and
    temp directories live in a private temporary directory, removed at the end; `output_dir` is
    left in place when given.
    """
    workdir = Path(tempfile.mkdtemp(prefix="comfysim-"))
    sim = SimulatorProcess(
        port=port or 0,
        output_dir=Path(output_dir) if output_dir is not None else workdir / "output",
        input_dir=workdir / "input",
        temp_dir=workdir / "temp",
        args=list(args),
        log_path=workdir / "comfysim.log",
        process=None,  # type: ignore[arg-type]  # set just below
    )
    port_file = workdir / "port" if port is None else None
    try:
        sim.process = _spawn(port or 0, sim, port_file)
        _wait_healthy(sim, port_file)
        yield sim
    finally:
        if sim.process is not None:
            sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class WsRecorder:
    """A WebSocket client that records every message on a background thread.

    Text messages are stored parsed (`{"type", "data"}`), binary frames as bytes.
    """

    url: str
    feature_flags: bool = False
    messages: list[Any] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    close_reason: str = ""

    def __post_init__(self) -> None:
        import websocket  # websocket-client; imported here so the server never needs it

        self._changed = threading.Condition()
        self._ws = websocket.create_connection(self.url, timeout=10)
        self._ws.settimeout(None)  # a quiet socket is not a dead one: wait as long as it takes
        if self.feature_flags:
            self._ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        import websocket

        while True:
            try:
                opcode, data = self._ws.recv_data()
            except Exception as ex:  # any end of the connection ends the recording
                self.close_reason = repr(ex)
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_reason = "close frame"
                break
            message: Any = bytes(data) if opcode == websocket.ABNF.OPCODE_BINARY else json.loads(data)
            with self._changed:
                self.messages.append(message)
                self._changed.notify_all()
        with self._changed:
            self.closed.set()
            self._changed.notify_all()

    def json_messages(self) -> list[dict[str, Any]]:
        with self._changed:
            return [m for m in self.messages if isinstance(m, dict)]

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """The first recorded message matching `predicate`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise SimulatorError(f"no matching WebSocket message within {timeout}s ({self.close_reason})")
                self._changed.wait(remaining)

    def wait_done(self, prompt_id: str, timeout: float = 10.0) -> None:
        """Wait for `executing` with node null for this prompt: it has finished either way."""
        self.wait_for(
            lambda m: (
                isinstance(m, dict)
                and m.get("type") == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()
        self._thread.join(timeout=5)


def first_mismatch(actual: Any, expected: Any, *, loose: Iterable[str] = (), path: str = "$") -> str | None:
    """Compare like a contract: same keys, same JSON types, same values, except under `loose`
    keys (ids, timestamps, counters), where only the type must match. Lists must have the same
    length. Returns the path and reason of the first difference, or None."""
    loose = set(loose)

    def kind(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, float):
            return "float"
        if isinstance(value, str):
            return "str"
        if isinstance(value, (list, tuple)):
            return "list"
        if isinstance(value, dict):
            return "object"
        return type(value).__name__

    def walk(a: Any, e: Any, where: str, is_loose: bool) -> str | None:
        if kind(a) != kind(e):
            return f"{where}: expected {kind(e)} {e!r:.80}, got {kind(a)} {a!r:.80}"
        if isinstance(e, dict):
            if set(a) != set(e):
                return f"{where}: keys differ, missing {sorted(set(e) - set(a))}, extra {sorted(set(a) - set(e))}"
            for key in e:
                problem = walk(a[key], e[key], f"{where}.{key}", is_loose or key in loose)
                if problem:
                    return problem
            return None
        if isinstance(e, (list, tuple)):
            if is_loose:
                return None
            if len(a) != len(e):
                return f"{where}: expected {len(e)} items, got {len(a)}"
            for index, (x, y) in enumerate(zip(a, e, strict=True)):
                problem = walk(x, y, f"{where}[{index}]", is_loose)
                if problem:
                    return problem
            return None
        if not is_loose and a != e:
            return f"{where}: expected {e!r:.120}, got {a!r:.120}"
        return None

    return walk(actual, expected, path, False)


def image_graph(prefix: str = "page", *, color: int = 0, width: int = 64, height: int = 64) -> dict[str, Any]:
    """The smallest useful graph: EmptyImage -> SaveImage (no models needed)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def sdxl_graph(
    text: str,
    *,
    prefix: str = "book/page",
    seed: int = 0,
    steps: int = 20,
    width: int = 1024,
    height: int = 1024,
    negative: str = "",
    checkpoint: str = "sd_xl_base_1.0.safetensors",
) -> dict[str, Any]:
    """A text-to-image graph as ComfyUI's default workflow exports it (the simulator's fake
    checkpoint validates; `[sim:oom]` and friends can go in `text`)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }
