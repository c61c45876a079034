"""`python -m comfysim --port 8188`: start the simulator.

Fault flags mirror the keys of POST /sim/faults; `--faults` takes a JSON object of them and the
single flags win over it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from comfysim import COMFYUI_VERSION
from comfysim.faults import DEVICE_TYPES, OOM_EXCEPTION_TYPES, FaultConfig, FaultConfigError
from comfysim.nodes import DEFAULT_CHECKPOINTS, Folders
from comfysim.server import Options, serve

API_VERSIONS = (COMFYUI_VERSION, "0.38", "0.38.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfysim", description="A ComfyUI 0.3.64 simulator.")
    parser.add_argument("--listen", "--host", dest="host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8188, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    parser.add_argument("--base-directory", type=Path, help="holds output/, input/ and temp/ (default: a new temp dir)")
    parser.add_argument("--output-directory", "--output-dir", dest="output_dir", type=Path)
    parser.add_argument("--input-directory", "--input-dir", dest="input_dir", type=Path)
    parser.add_argument("--temp-directory", "--temp-dir", dest="temp_dir", type=Path)
    parser.add_argument("--api-version", choices=API_VERSIONS, default=COMFYUI_VERSION)
    parser.add_argument("--test-nodes", action="store_true", help="add TestSleep and TestSyncError (ComfyUI test pack)")
    parser.add_argument("--cache-none", action="store_true", help="never serve nodes from the output cache")
    parser.add_argument("--disable-metadata", action="store_true", help="no prompt text chunk in saved PNGs")
    parser.add_argument(
        "--draw-prompt",
        action="store_true",
        help="SaveImage draws the graph's prompt text and seed on each image, on a colour taken from the "
        "prompt (a demo aid: real ComfyUI does not; off by default, so the simulator stays faithful)",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        dest="checkpoints",
        help=f"a model in checkpoints/ (default {DEFAULT_CHECKPOINTS[0]})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")

    faults = parser.add_argument_group("faults (same keys as POST /sim/faults)")
    faults.add_argument("--faults", help='JSON object of fault keys, e.g. \'{"oom": {"count": 1}}\'')
    faults.add_argument(
        "--render-time", help='seconds per prompt: "0.05", "uniform:a,b", "normal:mu,sd", "lognormal:mu,sd"'
    )
    faults.add_argument("--seed", type=int, help="seed for fault and render-time draws")
    faults.add_argument("--history-delay", type=float, help="seconds added to every /history response")
    faults.add_argument("--latency", type=float, help="seconds added to every HTTP response")
    faults.add_argument("--startup-delay", type=float, help="seconds before it answers, at start and restart")
    faults.add_argument("--idle-gc-pause", help='how long a garbage collection stops it, e.g. "uniform:0.6,1.8"')
    faults.add_argument(
        "--idle-gc-after", type=float, help="seconds between collections (10): a prompt ending later pauses"
    )
    faults.add_argument("--crash-after", type=int, help="the Nth prompt to start kills the process mid-render")
    faults.add_argument("--vram-total-mb", type=int)
    faults.add_argument("--vram-free-mb", type=int)
    faults.add_argument("--vram-busy-mb", type=int, help="VRAM a running prompt takes")
    faults.add_argument("--gpu-name")
    faults.add_argument("--device-type", choices=DEVICE_TYPES)
    faults.add_argument("--oom-exception-type", choices=OOM_EXCEPTION_TYPES)
    return parser


FAULT_FLAGS = (
    "render_time",
    "seed",
    "history_delay",
    "latency",
    "crash_after",
    "startup_delay",
    "idle_gc_pause",
    "idle_gc_after",
    "vram_total_mb",
    "vram_free_mb",
    "vram_busy_mb",
    "gpu_name",
    "device_type",
    "oom_exception_type",
)


def options_from_args(argv: list[str]) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    updates: dict[str, object] = {}
    if args.faults:
        try:
            loaded = json.loads(args.faults)
        except json.JSONDecodeError as ex:
            parser.error(f"--faults is not JSON: {ex}")
        if not isinstance(loaded, dict):
            parser.error("--faults must be a JSON object")
        updates.update(loaded)
    for key in FAULT_FLAGS:
        value = getattr(args, key)
        if value is not None:
            updates[key] = value
    try:
        config = FaultConfig().merged(updates)
    except FaultConfigError as ex:
        parser.error(str(ex))

    base = args.base_directory or Path(tempfile.mkdtemp(prefix="comfysim-"))
    folders = Folders(
        output=Path(os.path.abspath(args.output_dir or base / "output")),
        input=Path(os.path.abspath(args.input_dir or base / "input")),
        temp=Path(os.path.abspath(args.temp_dir or base / "temp")),
    )
    return Options(
        folders=folders,
        faults=config,
        host=args.host,
        port=args.port,
        api_version=args.api_version,
        test_nodes=args.test_nodes,
        cache_none=args.cache_none,
        disable_metadata=args.disable_metadata,
        draw_prompt=args.draw_prompt,
        checkpoints=tuple(args.checkpoints) if args.checkpoints else DEFAULT_CHECKPOINTS,
        port_file=args.port_file,
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> None:
    options = options_from_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(serve(options))


if __name__ == "__main__":
    main()
