"""GPU readings: pynvml on the GPU's own host, ComfyUI's /system_stats from anywhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
COMFY_BASE_PORT = 8188  # one ComfyUI per GPU listens on 8188 + GPU index


@dataclass(frozen=True)
class NvmlReading:
    index: int
    name: str
    vram_total_mb: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: int | None
    temperature_c: int | None
    power_w: float | None


def nvml_read(index: int) -> NvmlReading | None:
    """One GPU's reading through NVML, or None when there is no NVIDIA driver or no such GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # pynvml raises NVMLError_* subclasses, or ImportError without the library
        return None
    try:
        if index >= pynvml.nvmlDeviceGetCount():
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        return NvmlReading(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            vram_total_mb=int(memory.total) // (1024 * 1024),
            vram_used_mb=int(memory.used) // (1024 * 1024),
            vram_free_mb=int(memory.free) // (1024 * 1024),
            utilization_pct=_optional(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            temperature_c=_optional(lambda: int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))),
            power_w=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        )
    except Exception as exc:
        log.warning("NVML reading of GPU %s failed: %s", index, exc)
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _optional(read: Callable[[], T]) -> T | None:
    # Some boards (and MIG slices) do not report every sensor; a missing one is not an error.
    try:
        return read()
    except Exception:
        return None


def instance_gpu_index(instance_url: str, recorded: int | None) -> int | None:
    """The GPU to read NVML for: the instance record's index for a ComfyUI on this host (whatever
    its port), else the one its port implies (8188 + index); None for another host's."""
    if urlsplit(instance_url).hostname not in LOCAL_HOSTS:
        return None
    return recorded if recorded is not None else local_gpu_index(instance_url)


def local_gpu_index(instance_url: str) -> int | None:
    """The GPU index of a ComfyUI on this host (port 8188 + index), or None if it is remote."""
    parts = urlsplit(instance_url)
    if parts.hostname not in LOCAL_HOSTS or parts.port is None:
        return None
    index = parts.port - COMFY_BASE_PORT
    return index if 0 <= index < 64 else None
