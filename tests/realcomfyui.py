"""The tests' real ComfyUI (ops/realcomfyui.py): skipped without a source, or failed when one is
required (``BOOKRENDER_REQUIRE_COMFYUI``, as .ci/run sets it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from ops import realcomfyui
from ops.realcomfyui import DONE_MARKER_CLASS, RealComfyUI

__all__ = ["DONE_MARKER_CLASS", "RealComfyUI", "ensure_installed", "running_comfyui", "source_or_skip"]


def source_or_skip() -> tuple[str, str]:
    """(git source, ref); skips the test without one, or fails it when one is required."""
    configured = realcomfyui.configured_source()
    if configured is None:
        if settings.BOOKRENDER_REQUIRE_COMFYUI:
            pytest.fail(f"BOOKRENDER_REQUIRE_COMFYUI is set, but {realcomfyui.NOT_CONFIGURED}", pytrace=False)
        pytest.skip(realcomfyui.NOT_CONFIGURED)
    return configured


def ensure_installed() -> dict[str, Any]:
    """Install (or find in the cache) the tests' ComfyUI; its install record."""
    source, ref = source_or_skip()
    try:
        return realcomfyui.install(source, ref)
    except realcomfyui.InstallFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@contextmanager
def running_comfyui(data_dir: Path) -> Iterator[RealComfyUI]:
    with realcomfyui.running(ensure_installed(), data_dir) as comfy:
        yield comfy
