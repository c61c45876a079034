"""A page's render error: plain words and advice for its owner, one technical line for support."""

from __future__ import annotations

import pytest

from books.errors import error_advice, error_in_plain_words, error_technical


@pytest.mark.parametrize(
    "entry, words",
    [
        (
            {
                "kind": "oom",
                "message": "ComfyUI ran out of GPU memory on node 12 (KSampler): Allocation on device",
                "node_id": "12",
                "node_type": "KSampler",
            },
            "ComfyUI ran out of GPU memory on node 12 (KSampler)",
        ),
        (
            {
                "kind": "validation",
                "message": "Value not in list: ckpt_name: 'x.safetensors' not in []",
                "node_id": "4",
                "node_type": "CheckpointLoaderSimple",
            },
            "ComfyUI refused the workflow: Value not in list: ckpt_name: 'x.safetensors' not in [] "
            "on node 4 (CheckpointLoaderSimple)",
        ),
        (
            {"kind": "validation", "message": "", "node_id": None},
            "ComfyUI refused the workflow: the workflow is invalid",
        ),
        (
            {
                "kind": "unavailable",
                "message": "cannot reach ComfyUI for POST /prompt: ConnectionError",
                "instance": "http://10.0.0.5:8189",
            },
            "ComfyUI at http://10.0.0.5:8189 could not be reached, or lost the render",
        ),
        (
            {"kind": "timeout", "message": "prompt 1f0e did not finish within 600 s (cancelled on ComfyUI)"},
            "The render took longer than 10 minutes and was cancelled",
        ),
        (
            {"kind": "timeout", "message": "prompt 1f0e did not finish within 2.5 s"},
            "The render took longer than 2.5 s and was cancelled",
        ),
        (
            {
                "kind": "execution",
                "message": "RuntimeError on node 3 (VAEDecode): boom",
                "node_id": "3",
                "node_type": "VAEDecode",
                "exception_type": "RuntimeError",
            },
            "ComfyUI failed while rendering on node 3 (VAEDecode) (RuntimeError)",
        ),
        (
            {
                "kind": "interrupted",
                "message": "ComfyUI interrupted the prompt at node 3 (KSampler)",
                "node_id": "3",
                "node_type": "KSampler",
            },
            "The render was interrupted on ComfyUI on node 3 (KSampler)",
        ),
        (
            {
                "kind": "protocol",
                "message": "GET /history answered something that is not JSON: <html>",
                "instance": "http://127.0.0.1:8188",
            },
            "ComfyUI at http://127.0.0.1:8188 answered something unreadable",
        ),
        ({"kind": "mystery", "message": "Something new went wrong"}, "Something new went wrong"),
        ({}, "The render failed for an unknown reason"),
    ],
)
def test_each_kind_of_error_reads_as_one_technical_line_for_support(entry, words):
    assert error_technical(entry) == words


KINDS = ["oom", "validation", "unavailable", "timeout", "execution", "interrupted", "protocol", "low_vram"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_error_reads_without_jargon_and_comes_with_advice(kind):
    entry = {
        "kind": kind,
        "message": "x",
        "node_id": "4",
        "node_type": "PrimitiveStringMultiline",
        "exception_type": "RuntimeError",
        "instance": "http://10.0.0.5:8189",
    }
    words = error_in_plain_words(entry)
    for jargon in ("ComfyUI", "node", "PrimitiveStringMultiline", "RuntimeError", "http://"):
        assert jargon not in words
    assert words.endswith(".")
    retrying, given_up = error_advice(entry, retrying=True), error_advice(entry, retrying=False)
    assert "by itself" in retrying or "once more" in retrying
    assert "by itself" not in given_up and given_up != retrying


def test_a_temporary_error_is_called_temporary_and_a_settings_error_asks_for_an_edit():
    assert "Usually temporary" in error_advice({"kind": "unavailable"}, retrying=False)
    assert "Edit page" in error_advice({"kind": "validation"}, retrying=False)
    assert error_in_plain_words({"kind": "mystery"}) == error_in_plain_words({})
