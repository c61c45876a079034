"""The only code that speaks HTTP and WebSocket to ComfyUI.

Every call has an explicit timeout; every failure is a ComfyError with a kind and a ``retryable``
flag; responses are parsed into small typed objects here, so the rest of the code never touches
raw JSON. The shapes handled are those of ComfyUI 0.3.64 and 0.38 (shared/comfyui/API.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import certifi
import requests
import urllib3
import websocket
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as TransportTimeout

MB = 1024 * 1024
# exception_type strings ComfyUI reports for a GPU out-of-memory (API.md §9).
_OOM_TYPES = {"torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"}
_OOM_TIP = "This error means you ran out of memory on your GPU"
# Run-time errors caused by the job's own input: running it again changes nothing.
_INPUT_ERROR_TYPES = {"PIL.UnidentifiedImageError", "FileNotFoundError"}
# How a graph error's details name the node (API.md §2).
_NODE_ID_DETAILS = re.compile(r"Node ID '#([^']+)'")
# The largest image /view may send: a 4096x4096 16-bit RGBA PNG is 128 MiB uncompressed.
DEFAULT_MAX_IMAGE_BYTES = 128 * MB


# The keys under which a node's history output lists its files: SaveImage and SaveAnimatedWEBP/PNG
# write "images" (with "animated": [true] beside it), video nodes "images" or "video"/"videos"
# (newer releases), custom nodes (VideoHelperSuite) "gifs". The worker fetches whichever is there.
MEDIA_KEYS = ("images", "gifs", "video", "videos")


class ErrorKind(StrEnum):
    VALIDATION = "validation"  # ComfyUI refused the graph (400, or node_errors on a 200)
    OOM = "oom"  # out of GPU memory while running
    EXECUTION = "execution"  # a node raised while running
    INTERRUPTED = "interrupted"  # the prompt was interrupted or cancelled
    UNAVAILABLE = "unavailable"  # unreachable, 5xx, no answer, or the prompt was lost in a restart
    TIMEOUT = "timeout"  # the render did not finish in time
    PROTOCOL = "protocol"  # ComfyUI answered something we cannot read
    NO_OUTPUT = "no_output"  # the prompt succeeded but the output node wrote no file
    LOW_VRAM = "low_vram"  # the GPU never had enough free memory to start (COMFY_VRAM_WAIT_MAX_SEC)


_RETRYABLE = {
    ErrorKind.OOM: True,
    ErrorKind.EXECUTION: True,
    ErrorKind.INTERRUPTED: True,
    ErrorKind.UNAVAILABLE: True,
    ErrorKind.TIMEOUT: True,
    ErrorKind.PROTOCOL: True,
    ErrorKind.NO_OUTPUT: True,
    ErrorKind.VALIDATION: False,
    ErrorKind.LOW_VRAM: False,
}


class ComfyError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        instance: str = "",
        retryable: bool | None = None,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.instance = instance
        self.retryable = _RETRYABLE[kind] if retryable is None else retryable
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class SubmitResult:
    prompt_id: str
    number: float


@dataclass(frozen=True)
class OutputImage:
    node_id: str
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class HistoryEntry:
    prompt_id: str
    status: str  # "success", "error" or "interrupted"
    outputs: list[OutputImage]
    error: ComfyError | None
    started_at_ms: int | None
    finished_at_ms: int | None

    def images_of(self, node_id: str) -> list[OutputImage]:
        return [image for image in self.outputs if image.node_id == node_id]


@dataclass(frozen=True)
class QueueSnapshot:
    running: list[str]
    pending: list[str]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True)
class Device:
    name: str
    type: str
    index: int | None
    vram_total_mb: int
    vram_free_mb: int


@dataclass(frozen=True)
class SystemStats:
    comfyui_version: str
    devices: list[Device]

    @property
    def gpu(self) -> Device | None:
        return next(
            (d for d in self.devices if d.type == "cuda"),
            self.devices[0] if self.devices else None,
        )


@dataclass(frozen=True)
class PromptLocation:
    """Where a prompt is on a ComfyUI server: "pending", "running", "finished" or "absent"."""

    state: str
    entry: HistoryEntry | None = None


@dataclass
class WaitResult:
    entry: HistoryEntry
    history_attempts: int
    # How the end was seen: "success" (WebSocket, confirmed by history) or "postExecution"
    # (history polling found it while the WebSocket said nothing).
    exit_reason: str
    detected_at: float  # time.time() when the end was seen
    ws_reconnects: int = 0


@dataclass
class _WaitState:
    history_attempts: int = 0
    ws_reconnects: int = 0
    unreachable_since: float | None = None
    notes: list[str] = field(default_factory=list)


def new_client_id() -> str:
    # One socket per clientId (a second connection takes the first one's events away): unique ids.
    return f"bookrender-{socket.gethostname()[:20]}-{uuid.uuid4().hex[:12]}"


def _pool_for(base_url: str) -> urllib3.PoolManager:
    """Connections to one ComfyUI, with the proxy, CA bundle and .netrc login the environment
    gives for its URL, read once (as requests would, but requests reads them again on every call
    and costs twice the CPU of urllib3 alone per request: a worker makes four a page)."""
    headers: dict[str, str] = {}
    login = requests.utils.get_netrc_auth(base_url)
    if login:
        headers.update(urllib3.util.make_headers(basic_auth=f"{login[0]}:{login[1]}"))
    tls: dict[str, Any] = {
        "cert_reqs": "CERT_REQUIRED",
        "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where(),
    }
    scheme = base_url.split(":", 1)[0]
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy:
        return urllib3.ProxyManager(proxy, headers=headers, **tls)
    return urllib3.PoolManager(headers=headers, **tls)


class Response:
    """What a ComfyUI call answered: its status and body (read in full, unless streamed)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self._raw = raw
        self.status_code = raw.status

    @property
    def content(self) -> bytes:
        return self._raw.data

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        return self._raw.stream(chunk_size)

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.release_conn()


class ComfyClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        poll_interval: float = 2.0,
        unreachable_grace: float = 10.0,
        client_id: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.poll_interval = poll_interval
        # How long a prompt's server may stay unreachable during a wait before we give up on it.
        self.unreachable_grace = unreachable_grace
        self.client_id = client_id or new_client_id()
        self.max_image_bytes = max_image_bytes
        self._pool = _pool_for(self.base_url)
        self._jobs_api: bool | None = None
        self._stats: tuple[float, SystemStats] | None = None  # (monotonic time, reading)

    # --- one request function ---------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200,),
        stream: bool = False,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> Response:
        url = self.base_url + path
        if params:
            url += "?" + urlencode(params)
        fields: dict[str, Any] | None = None
        payload: bytes | None = None
        headers = dict(self._pool.headers)  # the .netrc login, if any
        if files or data:
            fields = {**(data or {}), **(files or {})}  # multipart/form-data
        elif body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            # No redirects: ComfyUI's API never sends one, and following it would take our request
            # (and a /view body) to whatever host it names. No retries: the callers decide.
            raw = self._pool.request(
                method,
                url,
                body=payload,
                fields=fields,
                headers=headers,
                timeout=timeout or self.timeout,
                redirect=False,
                retries=False,
                preload_content=not stream,
            )
        except (TransportError, OSError) as exc:
            # A timeout means the request may have arrived: the caller decides whether to look
            # before repeating it. (urllib3 files a refused connection under its timeouts too.)
            if isinstance(exc, TransportTimeout) and not isinstance(exc, NewConnectionError):
                raise self._error(
                    ErrorKind.UNAVAILABLE,
                    f"no answer from {method} {path} within {timeout or self.timeout:g} s",
                    details={"no_answer": True},
                ) from exc
            raise self._error(
                ErrorKind.UNAVAILABLE,
                f"cannot reach ComfyUI for {method} {path}: {type(exc).__name__}",
            ) from exc
        response = Response(raw)
        if response.status_code >= 500:
            raise self._error(
                ErrorKind.UNAVAILABLE,
                f"{method} {path} answered {response.status_code}: {_snippet(response.text)}",
                details={"status": response.status_code},
            )
        if response.status_code not in ok:
            raise self._error(
                ErrorKind.PROTOCOL,
                f"{method} {path} answered {response.status_code}: {_snippet(response.text)}",
                details={"status": response.status_code},
            )
        return response

    def _json(self, response: Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._error(
                ErrorKind.PROTOCOL,
                f"{what} answered something that is not JSON: {_snippet(response.text)}",
            ) from None

    def _error(self, kind: ErrorKind, message: str, **kwargs: Any) -> ComfyError:
        return ComfyError(kind, message, instance=self.base_url, **kwargs)

    def _protocol(self, what: str, data: Any) -> ComfyError:
        return self._error(
            ErrorKind.PROTOCOL,
            f"{what} has an unexpected shape: {_snippet(json.dumps(data, default=str))}",
        )

    # --- prompts ------------------------------------------------------------------------------

    def submit(
        self,
        graph: dict[str, Any],
        *,
        prompt_id: str,
        extra_data: dict[str, Any] | None = None,
    ) -> SubmitResult:
        """POST /prompt with our client_id and prompt_id (API.md §2, §11.1-2)."""
        body = {
            "prompt": graph,
            "client_id": self.client_id,
            "prompt_id": prompt_id,
            "extra_data": extra_data or {},
        }
        response = self._request("POST", "/prompt", body=body, ok=(200, 400))
        data = self._json(response, "POST /prompt")
        if response.status_code == 400:
            raise self._validation_error(data)
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise self._protocol("POST /prompt answer", data)
        if data.get("node_errors"):
            # Part of the graph was dropped and only the valid outputs run (API.md §2), at once if
            # the GPU is idle: that is not the page we asked for. Take it off the queue and
            # interrupt it if it already started; it was submitted all the same.
            try:
                self.queue_delete([data["prompt_id"]])
                self.interrupt(data["prompt_id"])
            except ComfyError:
                pass  # the validation error below is the news; a prompt left running ends by itself
            error = self._validation_error(
                {
                    "error": {
                        "type": "partial_validation",
                        "message": "Some outputs failed validation",
                    },
                    "node_errors": data["node_errors"],
                }
            )
            error.details["submitted"] = True
            raise error
        return SubmitResult(prompt_id=data["prompt_id"], number=float(data.get("number", 0)))

    def _validation_error(self, data: Any) -> ComfyError:
        if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
            return self._protocol("POST /prompt 400 answer", data)
        error = data["error"]
        raw_node_errors = data.get("node_errors")
        node_errors: dict[str, Any] = raw_node_errors if isinstance(raw_node_errors, dict) else {}
        message = str(error.get("message") or error.get("type") or "invalid prompt")
        node_id = node_type = None
        # error.details is often "" when the failing node is upstream; node_errors says which.
        for nid, node in node_errors.items():
            if not isinstance(node, dict):
                continue
            node_id, node_type = str(nid), node.get("class_type")
            first: Any = next(iter(node.get("errors") or []), {})
            if isinstance(first, dict):
                message = f"{first.get('message', message)}: {first.get('details', '')}".rstrip(": ")
            break
        else:
            # A graph error names its node only in details ("Node ID '#2'"), or in extra_info on
            # newer servers (API.md §2): keep the node id, and the message readable.
            extra = error.get("extra_info") if isinstance(error.get("extra_info"), dict) else {}
            match = _NODE_ID_DETAILS.fullmatch(str(error.get("details") or "").strip())
            if extra.get("node_id") is not None:
                node_id, node_type = str(extra["node_id"]), _str_or_none(extra.get("class_type"))
            elif match:
                node_id = match.group(1)
            if node_id is not None:
                message = f"{message.rstrip('.')} (node {node_id})"
            elif error.get("details"):
                message = f"{message}: {error['details']}"
        return self._error(
            ErrorKind.VALIDATION,
            message,
            node_id=node_id,
            node_type=node_type,
            details={"error_type": error.get("type"), "node_errors": node_errors},
        )

    def history(self, prompt_id: str) -> HistoryEntry | None:
        """The finished prompt's entry, or None while it is unknown or unfinished (API.md §6)."""
        response = self._request("GET", f"/history/{prompt_id}")
        data = self._json(response, "GET /history")
        if not isinstance(data, dict):
            raise self._protocol("GET /history answer", data)
        if prompt_id not in data:
            return None
        return self._parse_history(prompt_id, data[prompt_id])

    def _parse_history(self, prompt_id: str, item: Any) -> HistoryEntry:
        if not isinstance(item, dict) or not isinstance(item.get("status"), dict):
            raise self._protocol("history entry", item)
        status = item["status"]
        raw_messages = status.get("messages") or []
        if not isinstance(raw_messages, list):
            raise self._protocol("history status messages", raw_messages)
        messages = [m for m in raw_messages if isinstance(m, list) and len(m) == 2]
        by_name = {name: data for name, data in messages if isinstance(name, str) and isinstance(data, dict)}
        raw_outputs = item.get("outputs") or {}
        if not isinstance(raw_outputs, dict):
            raise self._protocol("history outputs", raw_outputs)
        outputs: list[OutputImage] = []
        for node_id, output in raw_outputs.items():
            if output is None:
                continue  # a node that wrote nothing
            if not isinstance(output, dict) or not all(isinstance(output.get(key) or [], list) for key in MEDIA_KEYS):
                raise self._protocol("history output", output)
            for image in (item for key in MEDIA_KEYS for item in output.get(key) or []):
                if not isinstance(image, dict) or "filename" not in image:
                    raise self._protocol("history output", output)
                outputs.append(
                    OutputImage(
                        str(node_id),
                        str(image["filename"]),
                        str(image.get("subfolder", "")),
                        str(image.get("type", "output")),
                    )
                )
        started = by_name.get("execution_start", {}).get("timestamp")
        error: ComfyError | None = None
        if status.get("status_str") == "success" and status.get("completed"):
            state = "success"
            finished = by_name.get("execution_success", {}).get("timestamp")
        elif "execution_interrupted" in by_name:
            state, data = "interrupted", by_name["execution_interrupted"]
            finished = data.get("timestamp")
            error = self._error(
                ErrorKind.INTERRUPTED,
                f"ComfyUI interrupted the prompt at node {data.get('node_id')} ({data.get('node_type')})",
                node_id=_str_or_none(data.get("node_id")),
                node_type=_str_or_none(data.get("node_type")),
            )
        elif "execution_error" in by_name:
            state, data = "error", by_name["execution_error"]
            finished = data.get("timestamp")
            error = self.execution_error(data)
        else:
            raise self._protocol("history status", status)
        return HistoryEntry(
            prompt_id=prompt_id,
            status=state,
            outputs=outputs,
            error=error,
            started_at_ms=started if isinstance(started, int) else None,
            finished_at_ms=finished if isinstance(finished, int) else None,
        )

    def execution_error(self, data: dict[str, Any]) -> ComfyError:
        """Classify an execution_error (WebSocket or history; API.md §9)."""
        exception_type = str(data.get("exception_type") or "")
        text = str(data.get("exception_message") or "").strip()
        is_oom = (
            exception_type in _OOM_TYPES
            or (exception_type == "torch.AcceleratorError" and "out of memory" in text.lower())
            or "out of memory" in text.lower()
            or _OOM_TIP in text
        )
        # The OOM tips ComfyUI appends say nothing the kind does not; keep the first line.
        first_line = text.split("\n", 1)[0] if text else exception_type
        node = f"node {data.get('node_id')} ({data.get('node_type')})"
        if is_oom:
            kind, message = (
                ErrorKind.OOM,
                f"ComfyUI ran out of GPU memory on {node}: {first_line}",
            )
        else:
            kind, message = (
                ErrorKind.EXECUTION,
                f"{exception_type or 'Error'} on {node}: {first_line}",
            )
        return self._error(
            kind,
            message,
            retryable=False if exception_type in _INPUT_ERROR_TYPES else None,
            node_id=_str_or_none(data.get("node_id")),
            node_type=_str_or_none(data.get("node_type")),
            exception_type=exception_type or None,
            details={"traceback": (data.get("traceback") or [])[-3:]},
        )

    def queue(self) -> QueueSnapshot:
        data = self._json(self._request("GET", "/queue"), "GET /queue")
        try:
            return QueueSnapshot(
                running=[str(item[1]) for item in data["queue_running"]],
                pending=[str(item[1]) for item in sorted(data["queue_pending"], key=lambda item: item[0])],
            )
        except (KeyError, IndexError, TypeError):
            raise self._protocol("GET /queue answer", data) from None

    def locate(self, prompt_id: str) -> PromptLocation:
        """Where our prompt is. The queue is read before history: a prompt moves from the queue to
        history atomically on the server, so in this order it can never look absent by mistake."""
        snapshot = self.queue()
        if prompt_id in snapshot.running:
            return PromptLocation("running")
        if prompt_id in snapshot.pending:
            return PromptLocation("pending")
        entry = self.history(prompt_id)
        if entry is not None:
            return PromptLocation("finished", entry)
        return PromptLocation("absent")

    def queue_remaining(self) -> int:
        """Prompts pending plus running (GET /prompt)."""
        data = self._json(self._request("GET", "/prompt"), "GET /prompt")
        try:
            return int(data["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError):
            raise self._protocol("GET /prompt answer", data) from None

    def queue_delete(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/queue", body={"delete": prompt_ids})

    def interrupt(self, prompt_id: str | None = None) -> None:
        # Without a prompt_id ComfyUI interrupts whatever is running: never send it bare by accident.
        self._request("POST", "/interrupt", body={"prompt_id": prompt_id} if prompt_id else {})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self._request(
            "POST",
            "/free",
            body={"unload_models": unload_models, "free_memory": free_memory},
        )

    def system_stats(self, *, max_age: float = 0.0) -> SystemStats:
        """ComfyUI's /system_stats; ``max_age`` (seconds) accepts this client's last reading
        if it is that fresh (the reading after one page serves as the one before the next)."""
        if self._stats is not None and time.monotonic() - self._stats[0] <= max_age:
            return self._stats[1]
        stats = self._read_system_stats()
        self._stats = (time.monotonic(), stats)
        return stats

    def _read_system_stats(self) -> SystemStats:
        data = self._json(self._request("GET", "/system_stats"), "GET /system_stats")
        try:
            devices = [
                Device(
                    name=str(d["name"]),
                    type=str(d["type"]),
                    index=d.get("index"),
                    vram_total_mb=int(d["vram_total"]) // MB,
                    vram_free_mb=int(d["vram_free"]) // MB,
                )
                for d in data["devices"]
            ]
            return SystemStats(
                comfyui_version=str(data["system"].get("comfyui_version", "")),
                devices=devices,
            )
        except (KeyError, TypeError, ValueError):
            raise self._protocol("GET /system_stats answer", data) from None

    def node_classes(self) -> set[str]:
        """The node class names in ComfyUI's /object_info: every node this server can run."""
        return set(self.object_info_raw())

    def object_info_raw(self) -> dict[str, Any]:
        """ComfyUI's /object_info as sent: each node class with its inputs (and a combo input's
        choices: the model files it has). ``object_info`` reads it into NodeClass records."""
        # /object_info describes ~500 classes and takes seconds on a cold server.
        response = self._request("GET", "/object_info", timeout=max(self.timeout, 60.0))
        data = self._json(response, "GET /object_info")
        if not isinstance(data, dict):
            raise self._protocol("GET /object_info", data)
        return data

    def upload_image(self, data: bytes, *, filename: str, subfolder: str = "") -> str:
        """``POST /upload/image`` into the instance's input folder (overwriting a file of the same
        name); the name LoadImage takes, ``subfolder/name`` (API.md: upload)."""
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data, "application/octet-stream")},
            data={"type": "input", "subfolder": subfolder, "overwrite": "true"},
            # An upload of up to BOOKRENDER_INPUT_MAX_MB takes longer than a JSON call.
            timeout=max(self.timeout, 60.0),
        )
        data_out = self._json(response, "POST /upload/image")
        if not isinstance(data_out, dict) or not isinstance(data_out.get("name"), str):
            raise self._protocol("POST /upload/image", data_out)
        folder = str(data_out.get("subfolder") or "")
        return f"{folder}/{data_out['name']}" if folder else str(data_out["name"])

    def object_info(self) -> dict[str, NodeClass]:
        """Every node class this server can run, with its required inputs and whether it is an
        output node: what a workflow is checked against before it is registered."""
        response = self._request("GET", "/object_info", timeout=max(self.timeout, 60.0))
        data = self._json(response, "GET /object_info")
        try:
            return node_classes_parse(data)
        except ValueError:
            raise self._protocol("GET /object_info", data) from None

    def view(self, image: OutputImage) -> bytes:
        response = self._request(
            "GET",
            "/view",
            params={
                "filename": image.filename,
                "subfolder": image.subfolder,
                "type": image.type,
            },
            ok=(200, 404),
            stream=True,
        )
        with response:
            if response.status_code == 404:
                raise self._error(
                    ErrorKind.PROTOCOL,
                    f"ComfyUI listed {image.subfolder}/{image.filename} but /view has no such file",
                )
            # Stop one chunk past max_image_bytes, whatever Content-Length says (or leaves out).
            body = bytearray()
            try:
                for chunk in response.iter_content(chunk_size=1024 * 1024):
                    body += chunk
                    if len(body) > self.max_image_bytes:
                        raise self._error(
                            ErrorKind.PROTOCOL,
                            f"/view sent more than {self.max_image_bytes / MB:g} MB for "
                            f"{image.subfolder}/{image.filename} (the limit is COMFY_MAX_IMAGE_MB)",
                        )
            except (TransportError, OSError) as exc:
                raise self._error(
                    ErrorKind.UNAVAILABLE, f"cannot read /view for {image.filename}: {type(exc).__name__}"
                ) from exc
        return bytes(body)

    # --- newer servers: /api/jobs (API.md §12) ------------------------------------------------

    def has_jobs_api(self) -> bool:
        if self._jobs_api is None:
            try:
                response = self._request("GET", "/api/jobs", params={"limit": 1}, ok=(200, 404, 405))
                self._jobs_api = response.status_code == 200 and isinstance(self._json(response, "GET /api/jobs"), dict)
            except ComfyError:
                return False  # unknown yet; ask again next time
        return self._jobs_api

    def job_status(self, prompt_id: str) -> str | None:
        """pending, in_progress, completed, failed or cancelled; None when the server has no such job."""
        response = self._request("GET", f"/api/jobs/{prompt_id}", ok=(200, 404))
        if response.status_code == 404:
            return None
        data = self._json(response, "GET /api/jobs/{id}")
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise self._protocol("GET /api/jobs/{id} answer", data)
        return str(data["status"])

    def cancel(self, prompt_id: str, *, confirm_within: float = 10.0) -> bool:
        """Cancel our prompt wherever it is, and confirm it is gone from the queue.

        Both /queue delete and /interrupt always answer 200 (API.md §4, §5), so the answer proves
        nothing; only the queue afterwards does. On 0.38+ the jobs API cancels atomically."""
        if self.has_jobs_api():
            self._request("POST", f"/api/jobs/{prompt_id}/cancel")
        else:
            self.queue_delete([prompt_id])
            self.interrupt(prompt_id)
        deadline = time.monotonic() + confirm_within
        while True:
            if prompt_id not in self.queue():
                return True
            if time.monotonic() >= deadline:
                return False
            # Interrupts are cooperative: the prompt stops at its next node or progress update.
            time.sleep(0.1)
            if not self.has_jobs_api():
                self.interrupt(prompt_id)

    # --- waiting for a prompt ------------------------------------------------------------------

    @contextmanager
    def watch(self) -> Iterator[PromptWatcher]:
        """Open the WebSocket *before* submitting, so no event of ours can be missed (§11.1), and
        close it when the wait is over.

        A socket is never left open between pages: ComfyUI broadcasts ``status`` to every socket
        from one message loop that waits for each write to drain, so a socket nobody reads would,
        a few thousand prompts later, stop the events of every client of that instance."""
        watcher = PromptWatcher(self)
        try:
            watcher.connect()
        except ComfyError:
            pass  # the wait falls back to polling and keeps trying to connect
        try:
            yield watcher
        finally:
            watcher.close()

    def close(self) -> None:
        self._pool.clear()


class PromptWatcher:
    def __init__(self, client: ComfyClient) -> None:
        self.client = client
        self._ws: websocket.WebSocket | None = None
        # The latest progress event of the prompt waited for: (value, max, node id).
        self.progress: tuple[int, int, str | None] | None = None

    def connect(self) -> None:
        url = self.client.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client.client_id}"
        try:
            # websocket-client checks UTF-8 in pure Python, a third of a worker's CPU per page;
            # json.loads below rejects invalid text anyway.
            self._ws = websocket.create_connection(url, timeout=self.client.timeout, skip_utf8_validation=True)
        except (OSError, websocket.WebSocketException) as exc:
            self._ws = None
            raise self.client._error(ErrorKind.UNAVAILABLE, f"WebSocket connect failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except (OSError, websocket.WebSocketException):
                pass
            self._ws = None

    def wait(
        self,
        prompt_id: str,
        *,
        timeout: float,
        on_tick: Callable[[], None] | None = None,
        tick_interval: float = 1.0,
        limit: str | None = None,
    ) -> WaitResult:
        """Wait for our prompt to end and return its history entry.

        1. Read the WebSocket; ``executing`` with ``node: null`` and our prompt_id means it ended,
           and the history entry is already written (API.md §10.2).
        2. Whenever the socket is quiet for ``poll_interval``, and after every reconnect, read
           /history ourselves: events missed while disconnected are never replayed (§10.1).
        3. A prompt that is neither queued, running nor in history was lost (ComfyUI restarted).
        4. ``on_tick`` runs about every ``tick_interval`` (the caller renews its lease there, and
           may raise to stop waiting); past ``timeout`` a ComfyError(TIMEOUT) is raised. Its
           message names ``limit`` ("COMFY_RENDER_TIMEOUT_SEC (300 s)") when the caller passes
           what is left of a longer limit as ``timeout``.
        """
        client = self.client
        state = _WaitState()
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + client.poll_interval
        next_tick = time.monotonic() + tick_interval
        reconnect_at = 0.0
        while True:
            now = time.monotonic()
            if now >= next_tick and on_tick is not None:
                on_tick()
                next_tick = now + tick_interval
            if now >= deadline:
                raise client._error(
                    ErrorKind.TIMEOUT,
                    f"prompt {prompt_id} did not finish within {limit or f'{timeout:g} s'}",
                    details={"history_attempts": state.history_attempts},
                )
            if self._ws is None and now >= reconnect_at:
                try:
                    self.connect()
                    state.ws_reconnects += 1
                    next_poll = now  # reconcile at once: events while we were away are lost
                except ComfyError:
                    reconnect_at = now + min(client.poll_interval, 1.0)
            if now >= next_poll:
                found = self._poll(prompt_id, state)
                if found is not None:
                    return WaitResult(
                        found,
                        state.history_attempts,
                        "postExecution",
                        time.time(),
                        state.ws_reconnects,
                    )
                next_poll = time.monotonic() + client.poll_interval
            wake = min(next_poll, next_tick if on_tick else next_poll, deadline)
            if self._ws is None:
                time.sleep(max(0.0, min(wake, reconnect_at) - time.monotonic()))
                continue
            if self._receive_end(prompt_id, max(0.001, wake - time.monotonic())):
                detected = time.time()
                state.history_attempts += 1
                entry = client.history(prompt_id)
                if entry is not None:
                    return WaitResult(
                        entry,
                        state.history_attempts,
                        "success",
                        detected,
                        state.ws_reconnects,
                    )
                next_poll = time.monotonic()  # should not happen (history is written first); poll

    def _receive_end(self, prompt_id: str, wait_for: float) -> bool:
        """True when our prompt's end arrives within ``wait_for`` seconds."""
        assert self._ws is not None
        self._ws.settimeout(wait_for)
        try:
            frame = self._ws.recv()
        except websocket.WebSocketTimeoutException:
            return False
        except (OSError, websocket.WebSocketException):
            self.close()  # dropped; the wait loop reconnects and reconciles with /history
            return False
        if not isinstance(frame, str):
            return False  # binary preview frames carry no prompt_id we need
        if prompt_id not in frame:
            return False  # status messages and other prompts': most of the traffic, not worth parsing
        if '"progress"' in frame:
            self._read_progress(frame)
            return False
        if '"executing"' not in frame:
            return False
        try:
            message = json.loads(frame)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("type") != "executing":
            return False
        data = message.get("data")
        return isinstance(data, dict) and data.get("node") is None and data.get("prompt_id") == prompt_id

    def _read_progress(self, frame: str) -> None:
        """``{"type": "progress", "data": {"value", "max", "node", "prompt_id"}}`` (API.md §10)."""
        try:
            message = json.loads(frame)
            data = message["data"]
            value, maximum = int(data["value"]), int(data["max"])
        except (ValueError, KeyError, TypeError):
            return
        if message.get("type") == "progress" and maximum > 0:
            self.progress = (min(value, maximum), maximum, _str_or_none(data.get("node")))

    def _poll(self, prompt_id: str, state: _WaitState) -> HistoryEntry | None:
        client = self.client
        state.history_attempts += 1
        try:
            location = client.locate(prompt_id)
        except ComfyError as exc:
            if exc.kind is not ErrorKind.UNAVAILABLE:
                raise
            now = time.monotonic()
            state.unreachable_since = state.unreachable_since or now
            if now - state.unreachable_since >= client.unreachable_grace:
                raise client._error(
                    ErrorKind.UNAVAILABLE,
                    f"ComfyUI unreachable for {now - state.unreachable_since:.0f} s while rendering: {exc.message}",
                    details={
                        "history_attempts": state.history_attempts,
                        "exit_reason": "attemptLimit",
                    },
                ) from exc
            return None
        state.unreachable_since = None
        if location.state == "finished":
            return location.entry
        if location.state == "absent":
            raise client._error(
                ErrorKind.UNAVAILABLE,
                f"prompt {prompt_id} is gone from ComfyUI's queue and history (ComfyUI restarted?)",
                details={"history_attempts": state.history_attempts, "lost": True},
            )
        return None


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class NodeClass:
    """One node class as ``/object_info`` describes it: what the graph needs to be valid."""

    required: frozenset[str]
    is_output: bool


def node_classes_parse(data: Any) -> dict[str, NodeClass]:
    """``/object_info`` as NodeClass records; raises ValueError on an answer of another shape."""
    if not isinstance(data, dict):
        raise ValueError("/object_info is not a JSON object")
    found = {}
    for name, info in data.items():
        if not isinstance(info, dict):
            raise ValueError(f"/object_info: {name!r} is not an object")
        required = (info.get("input") or {}).get("required") or {}
        if not isinstance(required, dict):
            raise ValueError(f"/object_info: {name!r} has required inputs that are not an object")
        found[name] = NodeClass(required=frozenset(required), is_output=bool(info.get("output_node")))
    return found
