#!/usr/bin/env python3
"""Replay one workflow against one ComfyUI server and measure it (seed 004 §2.2).

    python ops/loadtest/run_load_test.py --server http://127.0.0.1:8188 \\
        --workflow renders/workflow_templates/model-free.json \\
        --jobs 12 --concurrency 4 --timeout 420 --output var/loadtest/load.json

The workflow is a bookrender template (its placeholders are filled per job with a fresh seed and a
unique filename prefix) or a plain API-format graph ("Save (API Format)" in ComfyUI, bare or as a
``{"prompt": graph}`` body), whose seeds and filename prefixes are changed per job so that
ComfyUI's cache never answers in the GPU's place. Every job is submitted, watched and fetched
through bookrender's own ComfyUI client, so its errors have bookrender's kinds (validation, oom,
execution, interrupted, unavailable, timeout, protocol). Nothing is retried: this measures the
server, not bookrender's retry policy. A job past ``--timeout`` is cancelled on the server.

The output is one JSON document; ``jq .summary`` gives the success rate, latency percentiles
(submit to image fetched), throughput per minute and errors by kind. GPU snapshots (NVML) are
taken while it runs when the server is on this host and an NVIDIA driver answers; otherwise the
JSON says why there are none, and the VRAM ComfyUI reports (/system_stats) before and after is
there either way. Exit status: 0 when the run finished (whatever its failures), 2 when it could
not start (bad arguments, unreadable workflow, server not answering).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repository root holds renders/ and ops/.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from ops.loadtest.stats import distribution  # noqa: E402
from renders.comfy import ComfyClient, ComfyError, ErrorKind, OutputImage  # noqa: E402
from renders.gpu import local_gpu_index, nvml_read  # noqa: E402

SEED_INPUTS = ("seed", "noise_seed")
MAX_SEED = 2**32 - 1


class WorkflowInputError(ValueError):
    """A workflow file this harness cannot replay; the message says why."""


@dataclass
class Workload:
    """What each job submits: ``graph_for(job)`` gives a fresh graph for job number ``job``."""

    path: str
    kind: str  # "bookrender-template" or "api-graph"
    sha256: str
    output_node: str | None
    made_unique_by: list[str]
    template: Any = None
    graph: dict[str, Any] = field(default_factory=dict)
    prompt: str = "load test page {job}"
    width: int | None = None
    height: int | None = None
    run_id: str = ""

    def graph_for(self, job: int, rng: random.Random) -> dict[str, Any]:
        seed = rng.randrange(MAX_SEED)
        prefix = f"loadtest/{self.run_id}/job-{job:04d}"
        if self.template is not None:
            filled: dict[str, Any] = self.template.fill(
                prompt=self.prompt.format(job=job),
                negative_prompt="",
                seed=seed,
                filename_prefix=prefix,
                width=self.width,
                height=self.height,
            )
            return filled
        graph: dict[str, Any] = json.loads(json.dumps(self.graph))
        for node in graph.values():
            inputs = node.get("inputs", {})
            for key in SEED_INPUTS:
                if isinstance(inputs.get(key), int) and not isinstance(inputs.get(key), bool):
                    inputs[key] = seed
            if isinstance(inputs.get("filename_prefix"), str):
                inputs["filename_prefix"] = f"{inputs['filename_prefix']}_{self.run_id}_{job:04d}"
        return graph


def load_workload(path: Path, *, prompt: str, width: int | None, height: int | None) -> Workload:
    try:
        text = path.read_text()
        data = json.loads(text)
    except OSError as exc:
        raise WorkflowInputError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowInputError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowInputError(f"{path}: expected a JSON object")
    digest = hashlib.sha256(text.encode()).hexdigest()
    run_id = uuid.uuid4().hex[:8]
    if "nodes" in data and "links" in data:
        raise WorkflowInputError(f"{path} is in ComfyUI's UI format: export it with Save (API Format)")
    if isinstance(data.get("prompt"), dict) and "output_node" in data:
        from renders.workflows import WorkflowError, workflow_parse

        try:
            template = workflow_parse(text, slug="loadtest", path=path)
        except WorkflowError as exc:
            raise WorkflowInputError(str(exc)) from exc
        return Workload(
            path=str(path),
            kind="bookrender-template",
            sha256=digest,
            output_node=template.output_node,
            made_unique_by=["{{SEED}}", "{{FILENAME_PREFIX}}"],
            template=template,
            prompt=prompt,
            width=width,
            height=height,
            run_id=run_id,
        )
    graph = data["prompt"] if isinstance(data.get("prompt"), dict) else data
    if not graph or not all(isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise WorkflowInputError(f"{path}: not an API-format graph (every node needs a class_type)")
    unique = sorted(
        {
            key
            for node in graph.values()
            for key, value in (node.get("inputs") or {}).items()
            if (key in SEED_INPUTS and isinstance(value, int)) or (key == "filename_prefix" and isinstance(value, str))
        }
    )
    return Workload(
        path=str(path),
        kind="api-graph",
        sha256=digest,
        output_node=None,
        made_unique_by=unique,
        graph=graph,
        run_id=run_id,
    )


@dataclass
class JobResult:
    job: int
    prompt_id: str
    status: str = "failed"  # "success" or "failed"
    submitted_at: float | None = None  # time.time()
    finished_at: float | None = None
    latency_s: float | None = None  # submit to image fetched
    queue_wait_s: float | None = None  # submit to execution start (ComfyUI's clock)
    execution_s: float | None = None  # execution start to end (ComfyUI's history)
    image_bytes: int | None = None
    error_kind: str | None = None
    error: str | None = None
    cancelled: bool | None = None


def run_job(
    job: int,
    graph: dict[str, Any],
    *,
    server: str,
    output_node: str | None,
    timeout: float,
    http_timeout: float,
    poll_interval: float,
) -> JobResult:
    client = ComfyClient(server, timeout=http_timeout, poll_interval=poll_interval)
    result = JobResult(job=job, prompt_id=str(uuid.uuid4()))
    try:
        with client.watch() as watcher:
            result.submitted_at = time.time()
            client.submit(graph, prompt_id=result.prompt_id, extra_data={"loadtest": {"job": job}})
            try:
                waited = watcher.wait(result.prompt_id, timeout=timeout)
            except ComfyError as exc:
                if exc.kind is ErrorKind.TIMEOUT:
                    result.cancelled = _cancel(client, result.prompt_id)
                raise
            entry = waited.entry
            if entry.started_at_ms and entry.finished_at_ms:
                result.execution_s = round((entry.finished_at_ms - entry.started_at_ms) / 1000, 3)
                result.queue_wait_s = round(max(0.0, entry.started_at_ms / 1000 - result.submitted_at), 3)
            if entry.error is not None:
                raise entry.error
            images: list[OutputImage] = entry.images_of(output_node) if output_node else entry.outputs
            if not images:
                raise ComfyError(ErrorKind.EXECUTION, "the prompt finished without an image", instance=server)
            result.image_bytes = len(client.view(images[0]))
        result.status = "success"
    except ComfyError as exc:
        result.error_kind, result.error = str(exc.kind), exc.message
    result.finished_at = time.time()
    if result.submitted_at is not None:
        result.latency_s = round(result.finished_at - result.submitted_at, 3)
    return result


def _cancel(client: ComfyClient, prompt_id: str) -> bool:
    try:
        return client.cancel(prompt_id)
    except ComfyError:
        return False


class GpuSampler:
    """NVML snapshots of one GPU every ``interval`` seconds, on a thread, while jobs run."""

    def __init__(self, index: int | None, interval: float) -> None:
        self.index, self.interval = index, interval
        self.snapshots: list[dict[str, Any]] = []
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.index is None:
            self.reason = (
                "which GPU the server uses is unknown (it is not on this host, or its port is not 8188 + a GPU "
                "index); pass --gpu-index to sample one"
            )
            return
        if nvml_read(self.index) is None:
            self.reason = f"no NVML reading for GPU {self.index} (no NVIDIA driver or no such GPU here)"
            return
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            assert self.index is not None
            reading = nvml_read(self.index)
            if reading is not None:
                self.snapshots.append({"at": round(time.time(), 3), **asdict(reading)})
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        used = [s["vram_used_mb"] for s in self.snapshots]
        util = [s["utilization_pct"] for s in self.snapshots if s["utilization_pct"] is not None]
        return {
            "available": bool(self.snapshots),
            "index": self.index,
            "reason": "" if self.snapshots else self.reason,
            "peak_vram_used_mb": max(used, default=None),
            "mean_utilization_pct": round(sum(util) / len(util), 1) if util else None,
            "snapshots": self.snapshots,
        }


def system_stats(client: ComfyClient) -> dict[str, Any] | None:
    try:
        stats = client.system_stats()
    except ComfyError:
        return None
    return {"comfyui_version": stats.comfyui_version, "devices": [asdict(d) for d in stats.devices]}


def summarize(results: list[JobResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.status == "success"]
    return {
        "jobs": len(results),
        "succeeded": len(ok),
        "failed": len(results) - len(ok),
        "success_rate": round(len(ok) / len(results), 4) if results else None,
        "latency_s": distribution(r.latency_s for r in ok if r.latency_s is not None),
        "queue_wait_s": distribution(r.queue_wait_s for r in ok if r.queue_wait_s is not None),
        "execution_s": distribution(r.execution_s for r in ok if r.execution_s is not None),
        "throughput_per_min": round(len(ok) / wall_s * 60, 2) if wall_s > 0 else None,
        "wall_s": round(wall_s, 2),
        "errors_by_kind": dict(Counter(r.error_kind for r in results if r.error_kind).most_common()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_load_test.py", description="Replay a workflow against one ComfyUI server and measure it."
    )
    parser.add_argument("--server", required=True, help="ComfyUI base URL, e.g. http://127.0.0.1:8188")
    parser.add_argument("--workflow", required=True, type=Path, help="bookrender template or API-format graph")
    parser.add_argument("--jobs", type=int, default=12, help="how many prompts to submit (default 12)")
    parser.add_argument("--concurrency", type=int, default=4, help="prompts in flight at once (default 4)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per job before it is cancelled")
    parser.add_argument("--output", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--prompt", default="load test page {job}", help="a template's {{PROMPT}}; {job} = job no.")
    parser.add_argument("--width", type=int, help="a template's {{WIDTH}} (default: the template's)")
    parser.add_argument("--height", type=int, help="a template's {{HEIGHT}} (default: the template's)")
    parser.add_argument("--seed", type=int, help="seed for the per-job seeds, to repeat a run")
    parser.add_argument("--gpu-index", type=int, help="GPU to sample with NVML (default: from the server's port)")
    parser.add_argument("--gpu-interval", type=float, default=2.0, help="seconds between GPU snapshots")
    parser.add_argument("--http-timeout", type=float, default=10.0, help="timeout of each HTTP call")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="/history polling while the socket is quiet")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.timeout <= 0:
        parser.error("--jobs and --concurrency must be at least 1, --timeout positive")
    try:
        workload = load_workload(args.workflow, prompt=args.prompt, width=args.width, height=args.height)
    except WorkflowInputError as exc:
        print(f"run_load_test.py: {exc}", file=sys.stderr)
        return 2
    server = args.server.rstrip("/")
    probe = ComfyClient(server, timeout=args.http_timeout)
    before = system_stats(probe)
    if before is None:
        print(f"run_load_test.py: {server} does not answer GET /system_stats", file=sys.stderr)
        return 2
    if not workload.made_unique_by:
        print(
            "run_load_test.py: warning: the graph has no seed or filename_prefix input; ComfyUI may answer "
            "repeated jobs from its cache",
            file=sys.stderr,
        )
    rng = random.Random(args.seed)
    graphs = [workload.graph_for(job, rng) for job in range(1, args.jobs + 1)]
    gpu_index = args.gpu_index if args.gpu_index is not None else local_gpu_index(server)
    sampler = GpuSampler(gpu_index, args.gpu_interval)
    sampler.start()
    started_at = datetime.now(UTC)
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="job") as pool:
        futures = [
            pool.submit(
                run_job,
                job,
                graph,
                server=server,
                output_node=workload.output_node,
                timeout=args.timeout,
                http_timeout=args.http_timeout,
                poll_interval=args.poll_interval,
            )
            for job, graph in enumerate(graphs, start=1)
        ]
        results = [future.result() for future in futures]
    wall_s = time.monotonic() - began
    gpu = sampler.stop()
    report = {
        "summary": summarize(results, wall_s),
        "parameters": {
            "server": server,
            "workflow": args.workflow.as_posix(),
            "jobs": args.jobs,
            "concurrency": args.concurrency,
            "timeout_s": args.timeout,
            "seed": args.seed,
        },
        "workflow": {
            "path": workload.path,
            "format": workload.kind,
            "sha256": workload.sha256,
            "output_node": workload.output_node,
            "made_unique_by": workload.made_unique_by,
        },
        "run": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "harness": "bookrender ops/loadtest/run_load_test.py",
        },
        "server": {"before": before, "after": system_stats(probe)},
        "gpu": gpu,
        "jobs": [asdict(r) for r in results],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    if not gpu["available"]:
        print(f"GPU snapshots: none ({gpu['reason']})", file=sys.stderr)
    print(f"results: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
