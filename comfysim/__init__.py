"""A ComfyUI 0.3.64 stand-in for tests, load tests, fault drills and `make run`.

It speaks ComfyUI's HTTP and WebSocket API as captured from a real server (the captures in
tests/fixtures/comfyui are what tests/comfysim/test_contract.py replays), runs a handful of
model-free nodes for real with Pillow, and fakes a GPU.
Faults (OOM, hangs, crashes, dropped sockets, bad answers) are switched on from the command line
or at run time through `/sim/faults`.

Start it with `python -m comfysim --port 8188`; from tests use `comfysim.testing.running_simulator`.
"""

from __future__ import annotations

COMFYUI_VERSION = "0.3.64"
NEWER_COMFYUI_VERSION = "0.38.1"
