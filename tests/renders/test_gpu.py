from __future__ import annotations

import pytest

from renders.gpu import local_gpu_index, nvml_read


def test_a_local_instance_maps_to_its_gpu_by_port():
    assert local_gpu_index("http://127.0.0.1:8188") == 0
    assert local_gpu_index("http://localhost:8190") == 2
    assert local_gpu_index("http://gpu-box:8188") is None  # another host: use /system_stats
    assert local_gpu_index("http://127.0.0.1:5000") is None


def test_without_an_nvidia_driver_there_is_no_nvml_reading(monkeypatch):
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert nvml_read(0) is None


@pytest.mark.gpu
def test_it_reads_a_real_gpu():
    reading = nvml_read(0)
    if reading is None:
        pytest.skip("no NVIDIA GPU on this machine")
    assert reading.vram_total_mb > 1000
    assert 0 <= reading.vram_free_mb <= reading.vram_total_mb
    assert reading.vram_used_mb + reading.vram_free_mb <= reading.vram_total_mb + 1
    assert reading.temperature_c is None or 10 <= reading.temperature_c <= 110
    assert nvml_read(999) is None


def test_the_gpu_index_comes_from_the_instance_record_for_a_local_comfyui():
    from renders.gpu import instance_gpu_index

    assert instance_gpu_index("http://127.0.0.1:8288", 3) == 3  # a port far from 8188 + index
    assert instance_gpu_index("http://127.0.0.1:8189", None) == 1  # no record: the port says
    assert instance_gpu_index("http://gpu-box:8188", 0) is None  # another host's GPU: no NVML here
