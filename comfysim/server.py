"""The HTTP + WebSocket server: ComfyUI's routes, its prompt queue and history, and /sim/ controls.

Route by route this follows server.py and execution.PromptQueue of ComfyUI 0.3.64: every route
is also served under /api, errors outside POST /prompt are bare status codes, a body that is not
JSON is aiohttp's own 500, and all state is in memory, so a restart forgets queue and history.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import heapq
import io
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import signal
import sys
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.log import access_logger
from PIL import Image

from comfysim import COMFYUI_VERSION, NEWER_COMFYUI_VERSION
from comfysim import jobs as jobs_view
from comfysim.executor import Crash, PromptExecutor, RenderSettings, RunFaults
from comfysim.faults import RUN_FAULTS, FaultConfig, FaultConfigError, Faults, markers_in
from comfysim.nodes import DEFAULT_CHECKPOINTS, MODEL_FOLDERS, Catalog, Folders, annotated_filepath
from comfysim.validation import is_canonical_uuid, simulated_rejection, validate_prompt

MAXIMUM_HISTORY_SIZE = 10000
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
MIB = 1024 * 1024
SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Options:
    folders: Folders
    faults: FaultConfig = field(default_factory=FaultConfig)
    host: str = "127.0.0.1"
    port: int = 8188
    api_version: str = COMFYUI_VERSION
    test_nodes: bool = False
    cache_none: bool = False
    disable_metadata: bool = False
    draw_prompt: bool = False
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    port_file: Path | None = None
    verbose: bool = False

    @property
    def newer_api(self) -> bool:
        return self.api_version != COMFYUI_VERSION


@dataclass
class Stats:
    """What /sim/stats reports, so that tests can check that a fault really happened."""

    started_at: float = field(default_factory=time.time)
    submitted: int = 0
    submissions: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    # Prompts that began executing; crash_after counts these (since start-up or /sim/reset).
    started: int = 0
    completed: int = 0
    failed: int = 0
    interrupted: int = 0
    free_calls: int = 0
    ws_dropped: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def fault(self, name: str) -> None:
        self.faults[name] = self.faults.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "submissions": dict(self.submissions),
            "rejected": self.rejected,
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "free_calls": self.free_calls,
            "ws_dropped": self.ws_dropped,
            "faults": dict(self.faults),
            "started_at": self.started_at,
            "pid": os.getpid(),
        }


class PromptQueue:
    """execution.PromptQueue: a heap of [number, prompt_id, prompt, extra_data, outputs]."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        # Heap entries carry a sequence number so that two items never compare their dicts.
        self.heap: list[tuple[Any, str, int, list[Any]]] = []
        self.sequence = itertools.count()
        self.running: dict[int, list[Any]] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.task_counter = 0
        self.wake = asyncio.Event()

    def put(self, item: list[Any]) -> None:
        heapq.heappush(self.heap, (item[0], item[1], next(self.sequence), item))
        self.on_change()
        self.wake.set()

    def get(self) -> tuple[list[Any], int] | None:
        if not self.heap:
            return None
        item = heapq.heappop(self.heap)[3]
        item_id = self.task_counter
        self.running[item_id] = copy.deepcopy(item)
        self.task_counter += 1
        self.on_change()
        return item, item_id

    def task_done(self, item_id: int, history_result: dict[str, Any], status: dict[str, Any], *, strip: bool) -> None:
        prompt = self.running.pop(item_id)
        if strip:
            # 0.3.64 keeps Comfy.org tokens out of history only (they still show in /queue).
            prompt[3] = {k: v for k, v in prompt[3].items() if k not in SENSITIVE_EXTRA_DATA}
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        self.history[prompt[1]] = {"prompt": prompt, "outputs": {}, "status": copy.deepcopy(status)}
        self.history[prompt[1]].update(history_result)
        self.on_change()

    def remaining(self) -> int:
        return len(self.heap) + len(self.running)

    def pending_items(self) -> list[list[Any]]:
        # A copy of the heap array, deliberately not sorted (ComfyUI does not sort it either).
        return copy.deepcopy([entry[3] for entry in self.heap])

    def running_items(self) -> list[list[Any]]:
        return list(self.running.values())

    def running_ids(self) -> list[str]:
        return [item[1] for item in self.running.values()]

    def wipe(self) -> None:
        self.heap = []
        self.on_change()

    def delete(self, prompt_id: str) -> bool:
        for index, entry in enumerate(self.heap):
            if entry[1] == prompt_id:
                if len(self.heap) == 1:
                    self.wipe()
                else:
                    self.heap.pop(index)
                    heapq.heapify(self.heap)
                self.on_change()
                return True
        return False

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for index, key in enumerate(self.history):
            if index >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 64 * 1024**3, 48 * 1024**3


class Simulator:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.folders = options.folders
        for folder in (self.folders.output, self.folders.input, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self._clean_temp()
        self.catalog = Catalog(folders=self.folders, test_nodes=options.test_nodes, checkpoints=options.checkpoints)
        self.faults = Faults(options.faults)
        self.stats = Stats()
        self.number = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.socket_flags: dict[str, dict[str, Any]] = {}
        # Every open socket per clientId, including ones a newer connection took over: ws_drop
        # closes them all.
        self.connections: dict[str, list[tuple[web.WebSocketResponse, asyncio.Transport | None]]] = {}
        self.messages: asyncio.Queue[tuple[str, Any, str | None]] = asyncio.Queue()
        self.queue = PromptQueue(self.queue_updated)
        self.interrupt_requested = False
        self.flags: dict[str, Any] = {}
        self.busy = False
        self.idle_since = time.monotonic()  # when the last prompt ended (or the server started)
        # ComfyUI's garbage collection (main.py, prompt_worker): when it last collected, and
        # whether a prompt ended since. Never, at start: the first prompt ends with a collection.
        self.gc_last = float("-inf")
        self.gc_pending = False
        self.executor = PromptExecutor(
            catalog=self.catalog,
            folders=self.folders,
            send=self.send_sync,
            interrupted=lambda: self.interrupt_requested,
            drop_sockets=self.drop_sockets,
            supports_preview_metadata=self.supports_preview_metadata,
            cache_enabled=not options.cache_none,
            disable_metadata=options.disable_metadata,
            draw_prompt=options.draw_prompt,
        )
        self.app = self._make_app()
        self._tasks: list[asyncio.Task[None]] = []

    def _clean_temp(self) -> None:
        # ComfyUI empties its temp directory at start-up.
        for path in sorted(self.folders.temp.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()

    # --- app ---------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[self._latency, self._origin_only])
        comfy_routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self.websocket),
            ("GET", "/", self.root),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.model_folders),
            ("GET", "/models/{folder}", self.models),
            ("GET", "/extensions", self.extensions),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_image),
            ("GET", "/view", self.view),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/object_info", self.object_info),
            ("GET", "/object_info/{node_class}", self.object_info_node),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_prompt),
            ("POST", "/history", self.post_history),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
        ]
        for method, path, handler in comfy_routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path if path != "/" else "/api/", handler)
        if self.options.newer_api:
            # The jobs API exists only under /api.
            app.router.add_route("GET", "/api/jobs", self.list_jobs)
            app.router.add_route("POST", "/api/jobs/cancel", self.cancel_jobs)
            app.router.add_route("GET", "/api/jobs/{job_id}", self.get_job)
            app.router.add_route("POST", "/api/jobs/{job_id}/cancel", self.cancel_job)
        app.router.add_route("GET", "/sim/faults", self.sim_get_faults)
        app.router.add_route("POST", "/sim/faults", self.sim_set_faults)
        app.router.add_route("POST", "/sim/reset", self.sim_reset)
        app.router.add_route("GET", "/sim/stats", self.sim_stats)
        app.on_startup.append(self._start_tasks)
        app.on_shutdown.append(self._close_sockets)
        app.on_cleanup.append(self._stop_tasks)
        return app

    async def _start_tasks(self, app: web.Application) -> None:
        self._tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._publisher())]

    async def _close_sockets(self, app: web.Application) -> None:
        # Open WebSocket handlers would keep the shutdown waiting; a client gets 1s to answer.
        sockets = [ws for connections in self.connections.values() for ws, _ in connections]
        closing = [asyncio.wait_for(ws.close(code=1001, message=b"Server shutdown"), 1) for ws in sockets]
        await asyncio.gather(*closing, return_exceptions=True)

    async def _stop_tasks(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @web.middleware
    async def _latency(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        delay = self.faults.config.latency
        if delay > 0 and not request.path.startswith("/sim/") and request.path not in ("/ws", "/api/ws"):
            await asyncio.sleep(delay)
        response = await handler(request)
        answer_delay = self.faults.config.prompt_answer_delay
        if answer_delay > 0 and request.method == "POST" and request.path in ("/prompt", "/api/prompt"):
            await asyncio.sleep(answer_delay)  # the prompt is queued already; only the answer is late
        return response

    @web.middleware
    async def _origin_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # ComfyUI refuses a browser request from another origin to a loopback host (CSRF guard).
        host, origin = request.headers.get("Host"), request.headers.get("Origin")
        if host and origin:
            parsed = urllib.parse.urlparse(origin)
            origin_domain: str | None = parsed.netloc.lower()
            host_domain: str | None = host.lower()
            host_parsed = urllib.parse.urlsplit("//" + host.lower())
            if parsed.port is None:
                host_domain = host_parsed.hostname
            if host_parsed.port is None:
                origin_domain = parsed.hostname
            if _is_loopback(host_parsed.hostname) and host_domain and origin_domain and host_domain != origin_domain:
                return web.Response(status=403)
        return await handler(request)

    # --- messages ----------------------------------------------------------------------------

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        # One queue and one publisher, so WebSocket messages leave in the order they were made.
        self.messages.put_nowait((event, data, sid))

    async def send(self, event: str, data: Any, sid: str | None) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                if isinstance(data, (bytes, bytearray)):
                    await ws.send_bytes(bytes(data))
                else:
                    await ws.send_json({"type": event, "data": data})
            except Exception:  # a dead socket must not stop the others
                pass

    async def _publisher(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            await self.send(event, data, sid)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    def supports_preview_metadata(self, sid: str | None) -> bool:
        flags = self.socket_flags.get(sid or "", {})
        return bool(flags.get("supports_preview_metadata"))

    def drop_sockets(self, client_id: str) -> None:
        for _, transport in list(self.connections.get(client_id, [])):
            if transport is not None and not transport.is_closing():
                transport.abort()
                self.stats.ws_dropped += 1

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            # One socket per clientId: the old one stays open but gets nothing more.
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.socket_flags[sid] = {}
        connection = (ws, request.transport)
        self.connections.setdefault(sid, []).append(connection)
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.executor.client_id == sid and self.executor.last_node_id is not None:
                await self.send("executing", {"node": self.executor.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if first_message and data.get("type") == "feature_flags":
                        self.socket_flags[sid] = data.get("data", {})
                        await self.send("feature_flags", dict(SERVER_FEATURES), sid)
                    first_message = False
                except Exception:  # ComfyUI logs and ignores odd client messages
                    pass
        finally:
            # As in ComfyUI, this also unregisters a newer socket that took this clientId over.
            self.sockets.pop(sid, None)
            self.socket_flags.pop(sid, None)
            remaining = [c for c in self.connections.get(sid, []) if c[0] is not ws]
            if remaining:
                self.connections[sid] = remaining
            else:
                self.connections.pop(sid, None)
        return ws

    # --- worker ------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            self._apply_flags()
            taken = self.queue.get()
            if taken is None:
                self.queue.wake.clear()
                await self.queue.wake.wait()
                continue
            try:
                await self._run(*taken)
            except Exception as ex:
                # A simulator bug must not wedge the queue: fail this prompt visibly and go on.
                traceback.print_exc()
                self._internal_failure(*taken, ex)

    def _internal_failure(self, item: list[Any], item_id: int, ex: Exception) -> None:
        self.busy = False
        self.executor.last_node_id = None
        error = {
            "prompt_id": item[1],
            "node_id": None,
            "node_type": None,
            "executed": [],
            "exception_message": f"comfysim internal error: {ex!r}\n",
            "exception_type": "comfysim.InternalError",
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {},
            "current_outputs": [],
            "timestamp": int(time.time() * 1000),
        }
        status = {"status_str": "error", "completed": False, "messages": [["execution_error", error]]}
        self.queue.task_done(item_id, {"outputs": {}, "meta": {}}, status, strip=not self.options.newer_api)
        self.stats.failed += 1
        client_id = item[3].get("client_id")
        if client_id is not None:
            self.send_sync("execution_error", error, client_id)
            self.send_sync("executing", {"node": None, "prompt_id": item[1]}, client_id)

    def _apply_flags(self) -> None:
        flags, self.flags = self.flags, {}
        if flags.get("free_memory"):
            self.executor.cache.clear()
        if flags.get("free_memory") or flags.get("unload_models"):
            # Unloading brings free VRAM back to where it was at start-up (undoes a "leak").
            restored = min(self.faults.startup.vram_free_mb, self.faults.config.vram_total_mb)
            self.faults.config = self.faults.config.merged({"vram_free_mb": restored})

    def _run_faults(self, prompt: dict[str, Any]) -> RunFaults:
        markers = markers_in(prompt)
        run = RunFaults()
        crash_after = self.faults.config.crash_after
        if crash_after is not None and self.stats.started >= crash_after:
            run.crash = True
        forced = [name for name in ("hang", "oom", "error") if name in markers]
        if forced:
            setattr(run, forced[0], True)
        else:
            for name in ("hang", "oom", "error"):
                if self.faults.draw(name):
                    setattr(run, name, True)
                    break
        run.ws_drop = "ws_drop" in markers or self.faults.draw("ws_drop")
        for name in (*RUN_FAULTS, "crash"):
            if getattr(run, name):
                self.stats.fault(name)
        return run

    def crash(self) -> None:
        sys.stderr.write("comfysim: simulated crash (SIGKILL)\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached where SIGKILL exists

    def _collect_garbage(self, started: float) -> None:
        """ComfyUI's prompt worker runs gc.collect() when a prompt ends more than its interval
        (10 s) after the last collection, busy or not, and also while idle, once the interval is
        up after a prompt. The collection holds the GIL: the whole server stops for
        ``idle_gc_pause``, so the prompt's end reaches clients that much later. An idle-time
        collection is not seen by clients, but it resets the interval."""
        interval = self.faults.config.idle_gc_after
        if self.gc_pending and self.gc_last + interval <= started:
            self.gc_last = max(self.idle_since, self.gc_last + interval)  # collected while idle
        now = time.monotonic()
        if now - self.gc_last <= interval:
            self.gc_pending = True
            return
        self.gc_last, self.gc_pending = now, False
        pause = self.faults.gc_pause_seconds()
        if pause > 0:
            time.sleep(pause)  # blocks the event loop, as holding the GIL does

    async def _run(self, item: list[Any], item_id: int) -> None:
        _, prompt_id, prompt, extra_data, outputs = item
        self.interrupt_requested = False  # reset when every prompt starts, as in ComfyUI
        self.stats.started += 1
        if "crash" in markers_in(prompt):
            self.stats.fault("crash")
            self.crash()
        run = self._run_faults(prompt)
        config = self.faults.config
        render = RenderSettings(
            seconds=self.faults.render_seconds(),
            faults=run,
            oom_exception_type=config.oom_exception_type,
            vram_total_mb=config.vram_total_mb,
            vram_free_mb=config.vram_free_mb,
            newer_api=self.options.newer_api,
        )
        started = time.monotonic()
        self.busy = True
        try:
            outcome = await self.executor.execute(prompt_id, prompt, extra_data, outputs, render)
        except Crash:
            self.crash()
            raise
        finally:
            self.busy = False
        self._collect_garbage(started)
        self.idle_since = time.monotonic()
        status = {
            "status_str": "success" if outcome.kind == "success" else "error",
            "completed": outcome.kind == "success",
            "messages": outcome.messages,
        }
        self.queue.task_done(item_id, outcome.history_result, status, strip=not self.options.newer_api)
        client_id = extra_data.get("client_id")
        if client_id is not None:
            # Sent after the history write: /history/{id} is ready when this arrives.
            self.send_sync("executing", {"node": None, "prompt_id": prompt_id}, client_id)
        if outcome.kind == "success":
            self.stats.completed += 1
        elif outcome.kind == "interrupted":
            self.stats.interrupted += 1
        else:
            self.stats.failed += 1

    # --- ComfyUI routes ----------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>ComfyUI simulator (comfysim)</body></html>", content_type="text/html")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    async def model_folders(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(list(MODEL_FOLDERS))

    async def models(self, request: web.Request) -> web.StreamResponse:
        files = self.catalog.models(request.match_info["folder"])
        if files is None:
            return web.Response(status=404)
        return web.json_response(files)

    async def extensions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    async def features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(SERVER_FEATURES))

    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        config = self.faults.config
        ram_total, ram_free = _ram()
        if config.device_type == "cuda":
            busy_mb = config.vram_busy_mb if self.busy else 0
            device = {
                "name": f"cuda:0 {config.gpu_name} : cudaMallocAsync",
                "type": "cuda",
                "index": 0,
                "vram_total": config.vram_total_mb * MIB,
                "vram_free": max(0, config.vram_free_mb - busy_mb) * MIB,
                "torch_vram_total": busy_mb * MIB,
                "torch_vram_free": min(busy_mb, 256) * MIB,
            }
            torch_version = "2.13.0+cu130"
        else:
            device = {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }
            torch_version = "2.13.0+cpu"
        newer = self.options.newer_api
        system = {
            "os": sys.platform if newer else os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": NEWER_COMFYUI_VERSION if newer else COMFYUI_VERSION,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": torch_version,
            "embedded_python": False,
            "argv": list(sys.argv),
        }
        return web.json_response({"system": system, "devices": [device]})

    async def object_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({name: self.catalog.info(name) for name in self.catalog.names()})

    async def object_info_node(self, request: web.Request) -> web.StreamResponse:
        node_class = request.match_info["node_class"]
        if node_class in self.catalog:
            return web.json_response({node_class: self.catalog.info(node_class)})
        return web.json_response({})

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        # Faults that look like a broken proxy or an overloaded box come before ComfyUI proper.
        if self.faults.draw("unavailable"):
            self.stats.fault("unavailable")
            return web.Response(status=503, text="503: Service Unavailable")
        if self.faults.draw("garbage"):
            self.stats.fault("garbage")
            return web.Response(status=200, text="<html>oops", content_type="text/html")

        # A body that is not JSON raises here; aiohttp answers its plain-text 500, as captured.
        json_data = await request.json()
        if "number" in json_data:
            number: float | int = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1

        if "prompt" not in json_data:
            self.stats.rejected += 1
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        newer = self.options.newer_api
        if newer and "prompt_id" in json_data and not is_canonical_uuid(prompt_id):
            self.stats.rejected += 1
            error = {
                "type": "invalid_prompt_id",
                "message": "prompt_id must be a valid UUID",
                "details": f"Invalid prompt_id: {prompt_id}",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        targets = json_data.get("partial_execution_targets")
        check = {"catalog": self.catalog, "folders": self.folders, "partial_targets": targets, "newer_api": newer}
        result = validate_prompt(prompt, **check)
        if result.ok:
            marker = "[sim:validation]" in json.dumps(prompt)
            if marker or self.faults.draw("validation"):
                self.stats.fault("validation")
                injected = simulated_rejection(prompt, self.catalog, marker_only=marker)
                result = validate_prompt(prompt, injected=injected, **check)

        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if newer:
            extra_data["create_time"] = int(time.time() * 1000)
            if "Comfy-Usage-Source" in request.headers:
                extra_data["comfy_usage_source"] = request.headers["Comfy-Usage-Source"]
            for key in SENSITIVE_EXTRA_DATA:
                extra_data.pop(key, None)

        if not result.ok:
            self.stats.rejected += 1
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        self.queue.put([number, prompt_id, prompt, extra_data, result.good_outputs])
        self.stats.submitted += 1
        self.stats.submissions[prompt_id] = self.stats.submissions.get(prompt_id, 0) + 1
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors})

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"queue_running": self.queue.running_items(), "queue_pending": self.queue.pending_items()}
        )

    async def post_queue(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        # `in` and not .get(): like ComfyUI, a JSON list body is a harmless no-op, not a 500.
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019
            self.queue.wipe()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.queue.delete(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            # Only the running prompt can be interrupted; anything else is logged and ignored.
            if prompt_id in self.queue.running_ids():
                self.interrupt_requested = True
        else:
            self.interrupt_requested = True
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("unload_models", False):
            self.flags["unload_models"] = json_data["unload_models"]
        if json_data.get("free_memory", False):
            self.flags["free_memory"] = json_data["free_memory"]
        self.stats.free_calls += 1
        # The worker acts on the flags after the current prompt, or at once when idle.
        self.queue.wake.set()
        return web.Response(status=200)

    async def _history_delay(self) -> None:
        delay = self.faults.config.history_delay
        if delay > 0:
            await asyncio.sleep(delay)

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        await self._history_delay()
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.queue.get_history(max_items=max_items, offset=offset))

    async def get_history_prompt(self, request: web.Request) -> web.StreamResponse:
        await self._history_delay()
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in self.queue.history:
            # ComfyUI deep-copies the entry before json.dumps; serialising it at once is the same.
            return web.json_response({prompt_id: self.queue.history[prompt_id]})
        return web.json_response({})

    async def post_history(self, request: web.Request) -> web.StreamResponse:
        await self._history_delay()
        json_data = await request.json()
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 - see post_queue
            self.queue.history = {}
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    # --- files -------------------------------------------------------------------------------

    def _directory(self, kind: str | None) -> str | None:
        directory = self.folders.by_type(kind)
        return str(directory) if directory is not None else None

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, annotated_dir = annotated_filepath(query["filename"], self.folders)
        # ComfyUI indexes filename[0] here, so an empty name is a 500 there too.
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        output_dir = str(annotated_dir) if annotated_dir is not None else self._directory(query.get("type", "output"))
        if output_dir is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full_output_dir
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if not os.path.isfile(file):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            return self._preview(file, query, disposition)
        channel = query.get("channel", "rgba")
        if channel in ("rgb", "a"):
            return self._channel(file, channel, disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(file, headers={**disposition, "Content-Type": content_type})

    def _preview(self, file: str, query: Any, headers: dict[str, str]) -> web.StreamResponse:
        preview = query["preview"].split(";")
        image_format = preview[0]
        if image_format not in ("webp", "jpeg") or "a" in query.get("channel", ""):
            image_format = "webp"
        quality = int(preview[-1]) if preview[-1].isdigit() else 90
        buffer = io.BytesIO()
        with Image.open(file) as img:
            converted = img.convert("RGB") if image_format == "jpeg" or query.get("channel", "") == "rgb" else img
            converted.save(buffer, format=image_format, quality=quality)
        return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers)

    def _channel(self, file: str, channel: str, headers: dict[str, str]) -> web.StreamResponse:
        buffer = io.BytesIO()
        with Image.open(file) as img:
            if channel == "rgb":
                img.convert("RGB").save(buffer, format="PNG")
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
                out.save(buffer, format="PNG")
        return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type")
        kind = "input" if upload_type is None else str(upload_type)
        upload_dir = self._directory(kind)
        if upload_dir is None:
            # ComfyUI hits an unbound variable here; keep its 500.
            raise web.HTTPInternalServerError()
        if not isinstance(image, web.FileField) or not image.file:
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            counter = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as existing:
                    if hashlib.sha256(existing.read()).digest() == hashlib.sha256(data).digest():
                        # Same name, same bytes: the earlier upload is reused.
                        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})
                filename = f"{stem} ({counter}){ext}"
                filepath = os.path.join(folder, filename)
                counter += 1
        with open(filepath, "wb") as f:
            f.write(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # --- 0.38 jobs API -----------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        statuses = list(jobs_view.ALL_STATUSES)
        if query.get("status"):
            statuses = [s.strip() for s in query["status"].split(",") if s.strip()]
            invalid = [s for s in statuses if s not in jobs_view.ALL_STATUSES]
            if invalid:
                valid = ", ".join(jobs_view.ALL_STATUSES)
                return web.json_response(
                    {"error": f"Invalid status value(s): {', '.join(invalid)}. Valid: {valid}"}, status=400
                )
        sort_by = query.get("sort_by", "created_at")
        if sort_by not in ("created_at", "execution_duration"):
            return web.json_response({"error": "sort_by must be 'created_at' or 'execution_duration'"}, status=400)
        sort_order = query.get("sort_order", "desc")
        if sort_order not in ("asc", "desc"):
            return web.json_response({"error": "sort_order must be 'asc' or 'desc'"}, status=400)
        try:
            limit = int(query["limit"]) if "limit" in query else None
            offset = int(query.get("offset", "0"))
        except ValueError:
            return web.json_response({"error": "limit and offset must be integers"}, status=400)
        if (limit is not None and limit < 1) or offset < 0:
            return web.json_response({"error": "limit must be positive and offset non-negative"}, status=400)
        found = jobs_view.all_jobs(self.queue.running_items(), self.queue.pending_items(), self.queue.history, statuses)
        if query.get("workflow_id"):
            found = [job for job in found if job.get("workflow_id") == query["workflow_id"]]
        found = jobs_view.sort_jobs(found, sort_by, sort_order)
        total = len(found)
        page = found[offset:]
        if limit is not None:
            page = page[:limit]
        pagination = {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total}
        return web.json_response({"jobs": page, "pagination": pagination})

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        if job_id in self.queue.history:
            return web.json_response(jobs_view.history_job(job_id, self.queue.history[job_id], detail=True))
        for item in self.queue.running_items():
            if item[1] == job_id:
                return web.json_response(jobs_view.queue_job(item, jobs_view.IN_PROGRESS))
        for item in self.queue.pending_items():
            if item[1] == job_id:
                return web.json_response(jobs_view.queue_job(item, jobs_view.PENDING))
        return web.json_response({"error": "Job not found"}, status=404)

    def _cancel(self, job_id: str) -> bool:
        if job_id in self.queue.running_ids():
            self.interrupt_requested = True
            return True
        return self.queue.delete(job_id)

    async def cancel_job(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"cancelled": self._cancel(request.match_info["job_id"])})

    async def cancel_jobs(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "Invalid JSON body"}, status=400)
        job_ids = json_data.get("job_ids") if isinstance(json_data, dict) else None
        if not isinstance(job_ids, list):
            return web.json_response({"error": "job_ids must be a list"}, status=400)
        invalid = [job_id for job_id in job_ids if not isinstance(job_id, str) or not is_canonical_uuid(job_id)]
        if invalid:
            return web.json_response({"error": "job_ids must be valid UUIDs", "invalid_ids": invalid}, status=400)
        return web.json_response({"cancelled": [job_id for job_id in job_ids if self._cancel(job_id)]})

    # --- /sim/ controls ----------------------------------------------------------------------

    async def sim_get_faults(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.faults.config.to_json())

    async def sim_set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            updates = await request.json()
        except json.JSONDecodeError as ex:
            return web.json_response({"error": f"body is not JSON: {ex}"}, status=400)
        if not isinstance(updates, dict):
            return web.json_response({"error": "body must be a JSON object of fault keys"}, status=400)
        try:
            self.faults.update(updates)
        except FaultConfigError as ex:
            return web.json_response({"error": str(ex)}, status=400)
        return web.json_response(self.faults.config.to_json())

    async def sim_reset(self, request: web.Request) -> web.StreamResponse:
        self.faults.reset()
        started_at = self.stats.started_at
        self.stats = Stats(started_at=started_at)
        return web.json_response(self.faults.config.to_json())

    async def sim_stats(self, request: web.Request) -> web.StreamResponse:
        # ws_open: the sockets connected now (a client that leaves sockets open shows here).
        ws_open = sum(len(connections) for connections in self.connections.values())
        return web.json_response({**self.stats.to_json(), "api_version": self.options.api_version, "ws_open": ws_open})


async def serve(options: Options) -> None:
    """Run until SIGTERM or SIGINT."""
    simulator = Simulator(options)
    if options.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runner = web.AppRunner(
        simulator.app,
        access_log=access_logger if options.verbose else None,
        handle_signals=False,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    # A real ComfyUI takes 14-38 s from start to answering (API.md; issue 14): startup_delay.
    await asyncio.sleep(options.faults.startup_delay)
    site = web.TCPSite(runner, options.host, options.port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    if options.port_file is not None:
        tmp = options.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(options.port_file)
    print(f"comfysim {options.api_version} listening on http://{options.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
