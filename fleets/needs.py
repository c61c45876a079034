"""What a workflow needs from a bundle: its model files and the custom nodes of its node classes.

A pure function of the workflow's graph, a ComfyUI's /object_info and the bundle's entries. A
model input is a combo input (its /object_info spec is a list of choices) whose value names a
file; it is met by a copied entry at ``<folder>/<value>`` for the input's folder. A node class is
met by the bundle when a custom-node asset of the bundle lists it; a class no custom-node asset
lists and /object_info knows is ComfyUI's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

FILE_SUFFIXES = (
    ".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx",
    ".png", ".jpg", ".jpeg", ".webp",
)  # fmt: skip
# ComfyUI's folder for each well-known loader input; other file inputs may sit in any folder.
INPUT_FOLDERS: dict[str, tuple[str, ...]] = {
    "ckpt_name": ("models/checkpoints",),
    "lora_name": ("models/loras",),
    "vae_name": ("models/vae",),
    "control_net_name": ("models/controlnet",),
    "unet_name": ("models/unet", "models/diffusion_models"),
    "clip_name": ("models/clip", "models/text_encoders"),
    "clip_name1": ("models/clip", "models/text_encoders"),
    "clip_name2": ("models/clip", "models/text_encoders"),
    "model_name": ("models/upscale_models",),
    "image": ("input",),
}
ANY_FOLDER = ("models", "input")


@dataclass(frozen=True)
class Entry:
    target_path: str
    action: str
    node_classes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Needs:
    files: frozenset[tuple[str, tuple[str, ...]]]  # (value, folders it may sit in)
    node_classes: frozenset[str]


def _is_combo(spec: Any) -> bool:
    if not isinstance(spec, list) or not spec:
        return False
    return isinstance(spec[0], list) or spec[0] == "COMBO"


def _input_spec(object_info: dict[str, Any], class_type: str, name: str) -> Any:
    inputs = object_info.get(class_type, {}).get("input", {})
    for group in ("required", "optional"):
        spec = inputs.get(group, {}).get(name)
        if spec is not None:
            return spec
    return None


def workflow_needs(graph: dict[str, Any], object_info: dict[str, Any]) -> Needs:
    files: set[tuple[str, tuple[str, ...]]] = set()
    classes: set[str] = set()
    for node in graph.values():
        class_type = node["class_type"]
        classes.add(class_type)
        for name, value in node.get("inputs", {}).items():
            if not isinstance(value, str) or not value.lower().endswith(FILE_SUFFIXES):
                continue
            spec = _input_spec(object_info, class_type, name)
            # A class /object_info does not know (its custom node is not installed there) cannot be
            # asked; a file-like value for a well-known loader input is taken as a file.
            if spec is None and name not in INPUT_FOLDERS:
                continue
            if spec is not None and not _is_combo(spec):
                continue
            files.add((value, INPUT_FOLDERS.get(name, ANY_FOLDER)))
    return Needs(files=frozenset(files), node_classes=frozenset(classes))


def needs_missing(
    needs: Needs,
    *,
    object_info: dict[str, Any],
    entries: Iterable[Entry],
    custom_node_classes: set[str],
) -> list[str]:
    """What the bundle lacks, in words; empty when it has everything. ``custom_node_classes``:
    every class any custom-node asset lists (they are not ComfyUI's own, whatever the instance
    /object_info came from had installed)."""
    entries = list(entries)
    copied = {PurePosixPath(e.target_path) for e in entries if e.action == "copy"}
    provided = set().union(*(e.node_classes for e in entries)) if entries else set()
    missing: list[str] = []
    for value, folders in sorted(needs.files):
        if not any(PurePosixPath(folder) / value in copied for folder in folders) and not (
            folders == ANY_FOLDER and any(p.name == PurePosixPath(value).name for p in copied)
        ):
            missing.append(f"file {value!r} (in {' or '.join(f + '/' for f in folders)})")
    for class_type in sorted(needs.node_classes):
        if class_type in provided:
            continue
        if class_type in custom_node_classes or class_type not in object_info:
            missing.append(f"node class {class_type!r} (a custom node that provides it)")
    return missing
