"""Running one prompt: node order, the output cache, progress, WS events, errors, interrupts.

This follows execution.PromptExecutor and comfy_execution (graph, caching, progress) of ComfyUI
0.3.64 closely enough that the WS message sequence matches the captures message for message.
The one invented part is the render: the "slow node" (the sampler, or failing that the node just
before the first output) sleeps for the configured render time, reports progress, and is where
injected faults strike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfysim.nodes import (
    ASYNC_CLASSES,
    SAMPLER_CLASSES,
    Catalog,
    Folders,
    Latent,
    NodeCall,
    NodeResult,
    SimulatedError,
    format_value,
    is_changed,
    run_node,
)
from comfysim.validation import full_type_name

OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."
)

# What execution.py's frames look like in a real traceback; the node's own frames follow.
EXECUTION_FRAMES = [
    '  File "/srv/ComfyUI/execution.py", line 496, in execute\n'
    "    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, "
    "unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
    "hidden_inputs=hidden_inputs)\n",
    '  File "/srv/ComfyUI/execution.py", line 315, in get_output_data\n'
    "    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, "
    "obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
    "hidden_inputs=hidden_inputs)\n",
    '  File "/srv/ComfyUI/execution.py", line 289, in _async_map_node_over_list\n'
    "    await process_inputs(input_dict, i)\n",
    '  File "/srv/ComfyUI/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n',
]
SAMPLER_FRAMES = [
    '  File "/srv/ComfyUI/nodes.py", line 1525, in sample\n'
    "    return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, "
    "latent_image, denoise=denoise)\n",
    '  File "/srv/ComfyUI/comfy/samplers.py", line 1035, in sample\n'
    "    output = executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, "
    "disable_pbar, seed)\n",
    '  File "/srv/ComfyUI/comfy/ldm/modules/attention.py", line 449, in attention_pytorch\n'
    "    out = comfy.ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)\n",
]

# What a sampler needs, in MB of VRAM; more than the free VRAM is an OOM (1024x1024 fits in 4.5 GB).
VRAM_MODEL_MB = 2500
VRAM_PER_MEGAPIXEL_MB = 2000

# The slow node reports progress at most this often (ComfyUI's own TestSleep does ~100/s).
PROGRESS_INTERVAL = 0.05


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


class Crash(Exception):
    """Raised to tell the server to die right now, mid-render."""


@dataclass
class RunFaults:
    """What goes wrong in this prompt, decided when it starts."""

    hang: bool = False
    oom: bool = False
    error: bool = False
    ws_drop: bool = False
    crash: bool = False

    def any(self) -> bool:
        return self.hang or self.oom or self.error or self.ws_drop or self.crash


@dataclass
class Outcome:
    kind: str  # "success", "error" or "interrupted"
    messages: list[list[Any]]
    history_result: dict[str, Any]


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


def is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def now_ms() -> int:
    return int(time.time() * 1000)


class OutputCache:
    """The classic cache: outputs keyed by a node's inputs and all its ancestors' inputs.

    At the start of every prompt, entries the new prompt does not use are dropped, so only
    consecutive prompts share work (an identical resubmission is served entirely from cache).
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.entries: dict[str, CacheEntry] = {}

    def set_prompt(self, prompt: dict[str, Any], folders: Folders) -> dict[str, str]:
        keys: dict[str, str] = {}

        def key(node_id: str, visiting: set[str]) -> str:
            if node_id in keys:
                return keys[node_id]
            node = prompt.get(node_id)
            if not isinstance(node, dict) or node_id in visiting:
                return "missing:" + node_id
            visiting.add(node_id)
            inputs = node.get("inputs", {})
            parts: list[Any] = []
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value):
                    parts.append([name, "link", key(value[0], visiting), value[1]])
                else:
                    parts.append([name, value])
            class_type = node.get("class_type")
            changed = is_changed(class_type, inputs, folders) if isinstance(class_type, str) else ""
            raw = json.dumps([class_type, changed, parts], sort_keys=True, default=str)
            visiting.discard(node_id)
            keys[node_id] = hashlib.sha256(raw.encode()).hexdigest()
            return keys[node_id]

        for node_id in prompt:
            key(node_id, set())
        used = set(keys.values())
        self.entries = {k: v for k, v in self.entries.items() if k in used}
        return keys

    def get(self, key: str) -> CacheEntry | None:
        return self.entries.get(key) if self.enabled else None

    def set(self, key: str, entry: CacheEntry) -> None:
        if self.enabled:
            self.entries[key] = entry

    def drop(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()


class ExecutionList:
    """comfy_execution.graph.ExecutionList without subgraphs: which node runs next."""

    def __init__(self, prompt: dict[str, Any], catalog: Catalog, is_cached: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.blockers: dict[str, set[str]] = {}
        self.blocking: dict[str, dict[str, bool]] = {}

    def _lazy(self, node_id: str, input_name: str) -> bool:
        types = self.catalog.input_types(self.prompt[node_id]["class_type"])
        for category in ("required", "optional"):
            spec = types.get(category, {}).get(input_name)
            if spec is not None and len(spec) > 1 and isinstance(spec[1], dict):
                return bool(spec[1].get("lazy", False))
        return False

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, str]] = []
        while stack:
            unique_id = stack.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.blockers[unique_id] = set()
            self.blocking[unique_id] = {}
            for input_name, value in self.prompt[unique_id]["inputs"].items():
                if is_link(value) and not self._lazy(unique_id, input_name):
                    if not self.is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], unique_id))
        for from_id, to_id in links:
            if not self.is_cached(from_id) or from_id in self.pending:
                self.add_node(from_id)
                self.blocking[from_id][to_id] = True
                self.blockers[to_id].add(from_id)

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, node_id: str) -> bool:
        return self.catalog.is_output(self.prompt[node_id]["class_type"])

    def next_node(self) -> str | None:
        ready = [n for n in self.pending if not self.blockers[n]]
        if not ready:
            return None  # a dependency cycle
        # ux_friendly_pick_node: outputs and async nodes first, then what feeds an output.
        for node_id in ready:
            if self._is_output(node_id) or self.prompt[node_id]["class_type"] in ASYNC_CLASSES:
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if blocked in self.pending and any(self._is_output(b) for b in self.blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        self.blockers.pop(node_id, None)
        for blocked in self.blocking.pop(node_id, {}):
            self.blockers[blocked].discard(node_id)


def execution_order(prompt: dict[str, Any], outputs: list[str], catalog: Catalog) -> list[str]:
    """The order nodes would run in with an empty cache."""
    plan = ExecutionList(prompt, catalog, lambda _: False)
    for output in outputs:
        plan.add_node(output)
    order: list[str] = []
    while not plan.is_empty():
        node_id = plan.next_node()
        if node_id is None:
            break
        order.append(node_id)
        plan.complete(node_id)
    return order


def slow_node(prompt: dict[str, Any], order: list[str], catalog: Catalog) -> str | None:
    """Where the render time goes: the first sampler, else a TestSleep, else the node that runs
    just before the first output node, else the first node."""
    for classes in (SAMPLER_CLASSES, ASYNC_CLASSES):
        for node_id in order:
            if prompt[node_id]["class_type"] in classes:
                return node_id
    for index, node_id in enumerate(order):
        if catalog.is_output(prompt[node_id]["class_type"]):
            return order[index - 1] if index > 0 else node_id
    return order[0] if order else None


def descendants(prompt: dict[str, Any], node_id: str) -> set[str]:
    found = {node_id}
    changed = True
    while changed:
        changed = False
        for other, node in prompt.items():
            if other in found or not isinstance(node, dict):
                continue
            if any(is_link(v) and v[0] in found for v in node.get("inputs", {}).values()):
                found.add(other)
                changed = True
    return found


@dataclass
class RenderSettings:
    seconds: float
    faults: RunFaults = field(default_factory=RunFaults)
    oom_exception_type: str = "torch.OutOfMemoryError"
    vram_total_mb: int = 16311
    vram_free_mb: int = 14000
    newer_api: bool = False


Send = Callable[[str, Any, "str | None"], None]


class PromptExecutor:
    def __init__(
        self,
        *,
        catalog: Catalog,
        folders: Folders,
        send: Send,
        interrupted: Callable[[], bool],
        drop_sockets: Callable[[str], None],
        supports_preview_metadata: Callable[[str | None], bool],
        cache_enabled: bool,
        disable_metadata: bool,
        draw_prompt: bool = False,
    ) -> None:
        self.catalog = catalog
        self.folders = folders
        self.send = send
        self.interrupted = interrupted
        self.drop_sockets = drop_sockets
        self.supports_preview_metadata = supports_preview_metadata
        self.cache = OutputCache(enabled=cache_enabled)
        self.disable_metadata = disable_metadata
        self.draw_prompt = draw_prompt
        # What a reconnecting socket is told (server.client_id / server.last_node_id).
        self.client_id: str | None = None
        self.last_node_id: str | None = None

    async def execute(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        outputs: list[str],
        render: RenderSettings,
    ) -> Outcome:
        self.client_id = extra_data.get("client_id")
        run = _PromptRun(self, prompt_id, prompt, extra_data, outputs, render)
        try:
            return await run.execute()
        finally:
            self.last_node_id = None


class _PromptRun:
    def __init__(
        self,
        executor: PromptExecutor,
        prompt_id: str,
        prompt: dict[str, Any],
        extra_data: dict[str, Any],
        outputs: list[str],
        render: RenderSettings,
    ) -> None:
        self.ex = executor
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.extra_data = extra_data
        self.outputs = outputs
        self.render = render
        self.client_id: str | None = extra_data.get("client_id")
        self.messages: list[list[Any]] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.values: dict[str, tuple[Any, ...]] = {}
        self.keys: dict[str, str] = {}
        self.slow: str | None = None
        self.prompt_node_id = ""

    # --- events ------------------------------------------------------------------------------

    def add_message(self, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.ex.send(event, data, self.client_id)

    def send_progress_state(self) -> None:
        nodes = {
            node_id: {
                "value": state["value"],
                "max": state["max"],
                "state": state["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in self.progress.items()
        }
        # progress_state goes to the prompt's client, or to everybody when it has none.
        self.ex.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id)

    def start_progress(self, node_id: str) -> None:
        self.progress[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        self.send_progress_state()

    def update_progress(self, node_id: str, value: float, maximum: float, preview: bytes | None = None) -> None:
        self.progress[node_id] = {"value": value, "max": maximum, "state": "running"}
        self.send_progress_state()
        metadata_client = preview is not None and self.ex.supports_preview_metadata(self.client_id)
        if preview is not None and metadata_client:
            meta = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
                "image_type": "image/png",
            }
            encoded = json.dumps(meta).encode()
            frame = (4).to_bytes(4, "big") + len(encoded).to_bytes(4, "big") + encoded + preview
            self.ex.send("binary", frame, self.client_id)
        self.ex.send(
            "progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id}, self.client_id
        )
        if preview is not None and not metadata_client:
            self.ex.send("binary", (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + preview, self.client_id)

    def finish_progress(self, node_id: str) -> None:
        state = self.progress.get(node_id)
        maximum = state["max"] if state is not None else 1
        self.progress[node_id] = {"value": maximum, "max": maximum, "state": "finished"}
        self.send_progress_state()

    # --- the prompt --------------------------------------------------------------------------

    async def execute(self) -> Outcome:
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        self.keys = self.ex.cache.set_prompt(self.prompt, self.ex.folders)
        order = execution_order(self.prompt, self.outputs, self.ex.catalog)
        self.slow = slow_node(self.prompt, order, self.ex.catalog)
        if self.render.faults.any() and self.slow is not None:
            # A fault must strike even when the graph is cached: make the slow node run again.
            for stale in descendants(self.prompt, self.slow):
                self.ex.cache.drop(self.keys[stale])
        cached = [n for n in self.prompt if self.ex.cache.get(self.keys[n]) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, broadcast=False)
        current_outputs = list(self.prompt)

        plan = ExecutionList(self.prompt, self.ex.catalog, lambda n: self.ex.cache.get(self.keys[n]) is not None)
        for output in self.outputs:
            plan.add_node(output)
        kind = "success"
        while not plan.is_empty():
            node_id = plan.next_node()
            if node_id is None:
                self._report_error(
                    next(iter(plan.pending)),
                    current_outputs,
                    {
                        "exception_message": "Dependency cycle detected\n",
                        "exception_type": "graph.DependencyCycleError",
                        "traceback": [],
                        "current_inputs": [],
                    },
                )
                kind = "error"
                break
            error = await self.execute_node(node_id)
            if error is None:
                plan.complete(node_id)
                continue
            if error == "interrupted":
                self.add_message(
                    "execution_interrupted",
                    {
                        "prompt_id": self.prompt_id,
                        "node_id": node_id,
                        "node_type": self.prompt[node_id]["class_type"],
                        "executed": list(self.executed),
                    },
                    broadcast=True,
                )
                kind = "interrupted"
            else:
                assert isinstance(error, dict)
                self._report_error(node_id, current_outputs, error)
                kind = "error"
            break
        else:
            self.add_message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)

        history_result = {
            "outputs": {node_id: ui["output"] for node_id, ui in self.ui_outputs.items()},
            "meta": {node_id: ui["meta"] for node_id, ui in self.ui_outputs.items()},
        }
        return Outcome(kind=kind, messages=self.messages, history_result=history_result)

    def _report_error(self, node_id: str, current_outputs: list[str], error: dict[str, Any]) -> None:
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self.prompt[node_id]["class_type"],
                "executed": list(self.executed),
                "exception_message": error["exception_message"],
                "exception_type": error["exception_type"],
                "traceback": error["traceback"],
                "current_inputs": error["current_inputs"],
                "current_outputs": current_outputs,
            },
            broadcast=False,
        )

    def _inputs(self, node_id: str) -> dict[str, Any]:
        node = self.prompt[node_id]
        types = self.ex.catalog.input_types(node["class_type"])
        declared = {**types.get("required", {}), **types.get("optional", {})}
        values: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                source = self.values.get(value[0])
                if source is None:
                    entry = self.ex.cache.get(self.keys[value[0]])
                    source = entry.outputs if entry is not None else None
                values[name] = source[int(value[1])] if source is not None and int(value[1]) < len(source) else None
            elif name in declared:
                values[name] = value
        return values

    def _formatted_inputs(self, class_type: str, values: dict[str, Any]) -> dict[str, list[Any]]:
        formatted = {name: [format_value(value)] for name, value in values.items()}
        hidden = self.ex.catalog.input_types(class_type).get("hidden", {})
        for name, kind in hidden.items():
            if kind == "PROMPT":
                formatted[name] = [format_value(self.prompt)]
            elif kind == "EXTRA_PNGINFO":
                formatted[name] = [format_value(self.extra_data.get("extra_pnginfo"))]
            elif kind == "UNIQUE_ID":
                formatted[name] = [format_value(self.prompt_node_id)]
        return formatted

    async def execute_node(self, node_id: str) -> dict[str, Any] | str | None:
        """Run (or serve from cache) one node; None on success, "interrupted", or an error dict."""
        class_type = self.prompt[node_id]["class_type"]
        entry = self.ex.cache.get(self.keys[node_id])
        if entry is not None:
            if self.client_id is not None:
                output = entry.ui["output"] if entry.ui is not None else None
                self.ex.send(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": output, "prompt_id": self.prompt_id},
                    self.client_id,
                )
            if entry.ui is not None:
                self.ui_outputs[node_id] = entry.ui
            self.finish_progress(node_id)
            return None

        self.start_progress(node_id)
        self.prompt_node_id = node_id
        values = self._inputs(node_id)
        try:
            if self.client_id is not None:
                self.ex.last_node_id = node_id
                self.ex.send(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id},
                    self.client_id,
                )
            # before_node_execution(): the interrupt flag is checked before every node.
            if self.ex.interrupted():
                raise Interrupted()
            faults = self.render.faults if node_id == self.slow else RunFaults()
            if class_type in SAMPLER_CLASSES and self._vram_needed_mb(values) > self.render.vram_free_mb:
                # Too big a latent for the free VRAM (say after a leak): a genuine OOM.
                faults = dataclasses.replace(faults, oom=True)
            if class_type == "TestSleep":
                await self.sleep(node_id, float(values.get("seconds", 0.0)), steps=None, faults=faults)
            elif node_id == self.slow:
                steps = values.get("steps") if class_type in SAMPLER_CLASSES else None
                await self.sleep(
                    node_id, self.render.seconds, steps=steps if isinstance(steps, int) else None, faults=faults
                )
            call = NodeCall(
                node_id=node_id,
                class_type=class_type,
                inputs=values,
                prompt=self.prompt,
                extra_pnginfo=self.extra_data.get("extra_pnginfo"),
                folders=self.ex.folders,
                disable_metadata=self.ex.disable_metadata,
                draw_prompt=self.ex.draw_prompt,
            )
            # Pixel work runs in a thread so the event loop keeps answering HTTP meanwhile.
            result: NodeResult = await asyncio.to_thread(run_node, call)
        except Interrupted:
            return "interrupted"
        except Crash:
            raise
        except Exception as ex:
            return self._error_details(class_type, values, ex)

        for number, preview in enumerate(result.previews):
            self.update_progress(node_id, number, len(result.previews), preview)
        self.values[node_id] = result.outputs
        ui: dict[str, Any] | None = None
        if result.ui:
            ui = {
                "output": result.ui,
                "meta": {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id},
            }
            self.ui_outputs[node_id] = ui
            if self.client_id is not None:
                self.ex.send(
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": result.ui, "prompt_id": self.prompt_id},
                    self.client_id,
                )
        self.ex.cache.set(self.keys[node_id], CacheEntry(result.outputs, ui))
        self.executed.append(node_id)
        self.finish_progress(node_id)
        return None

    def _error_details(self, class_type: str, values: dict[str, Any], ex: Exception) -> dict[str, Any]:
        if isinstance(ex, SimulatedError):
            type_name = ex.type_name
            frames = EXECUTION_FRAMES + SAMPLER_FRAMES
        else:
            type_name = full_type_name(type(ex))
            extracted = traceback.extract_tb(ex.__traceback__)
            own = [i for i, frame in enumerate(extracted) if frame.filename.endswith("nodes.py")]
            frames = EXECUTION_FRAMES + traceback.format_list(extracted[own[0] :] if own else extracted[-1:])
        tips = ""
        oom_types = ("torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError")
        if type_name in oom_types or (
            self.render.newer_api and type_name == "torch.AcceleratorError" and "out of memory" in str(ex)
        ):
            tips = OOM_TIPS
        return {
            "exception_message": f"{ex}\n{tips}",
            "exception_type": type_name,
            "traceback": frames,
            "current_inputs": self._formatted_inputs(class_type, values),
        }

    @staticmethod
    def _vram_needed_mb(values: dict[str, Any]) -> float:
        """A rough SDXL figure: the model plus activations that grow with the latent's pixels."""
        latent = values.get("latent_image")
        if not isinstance(latent, Latent):
            return 0.0
        megapixels = latent.batch * latent.width * latent.height / 2**20
        return VRAM_MODEL_MB + VRAM_PER_MEGAPIXEL_MB * megapixels

    async def sleep(self, node_id: str, seconds: float, *, steps: int | None, faults: RunFaults) -> None:
        """The render: wait `seconds`, report progress, and let injected faults strike half-way.

        Progress is integer steps for a sampler (value 1..steps of max steps) and a fraction of
        1.0 otherwise, like TestSleep. Interrupts are honoured at every tick.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        last_sent = -math.inf
        last_value: float = 0
        struck = False

        def strike() -> None:
            if faults.ws_drop and self.client_id is not None:
                self.ex.drop_sockets(self.client_id)
            if faults.crash:
                raise Crash()
            if faults.oom:
                raise self._oom()
            if faults.error:
                raise RuntimeError(f"[sim] simulated failure in {self.prompt[node_id]['class_type']} node {node_id}")

        if faults.hang:
            strike()
            while True:  # until an interrupt, or the process dies
                await asyncio.sleep(PROGRESS_INTERVAL)
                if self.ex.interrupted():
                    raise Interrupted()

        while True:
            elapsed = loop.time() - start
            if elapsed >= seconds:
                break
            await asyncio.sleep(min(PROGRESS_INTERVAL, seconds - elapsed))
            if self.ex.interrupted():
                raise Interrupted()
            elapsed = loop.time() - start
            if not struck and elapsed >= seconds / 2:
                struck = True
                strike()
            if elapsed >= seconds or loop.time() - last_sent < PROGRESS_INTERVAL:
                continue
            if steps is None:
                self.update_progress(node_id, elapsed / seconds, 1.0)
                last_sent = loop.time()
            else:
                value = min(steps, int(elapsed / seconds * steps))
                if value > last_value:
                    self.update_progress(node_id, value, steps)
                    last_value = value
                    last_sent = loop.time()
        if not struck:
            strike()
        if steps is not None:
            self.update_progress(node_id, steps, steps)
        elif seconds > 0:
            self.update_progress(node_id, 1.0, 1.0)

    def _oom(self) -> SimulatedError:
        total_gib = self.render.vram_total_mb / 1024
        free_gib = max(0.0, (self.render.vram_free_mb - 6144) / 1024)
        if self.render.oom_exception_type == "torch.AcceleratorError":
            return SimulatedError("torch.AcceleratorError", "CUDA error: out of memory")
        return SimulatedError(
            self.render.oom_exception_type,
            f"CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of {total_gib:.2f} GiB "
            f"of which {free_gib:.2f} GiB is free. Including non-PyTorch memory, this process has "
            f"{total_gib - free_gib:.2f} GiB memory in use. Of the allocated memory "
            f"{max(0.0, total_gib - free_gib - 0.9):.2f} "
            "GiB is allocated by PyTorch, and 892.31 MiB is reserved by PyTorch but unallocated. If reserved but "
            "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
            "fragmentation.  See documentation for Memory Management  "
            "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
        )
