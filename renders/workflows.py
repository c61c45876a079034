"""ComfyUI workflow templates: API-format graphs with placeholders and a declared output node.

A template is a JSON file in ``renders/workflow_templates/`` (or ``BOOKRENDER_WORKFLOWS_DIR``)::

    {"title": "...", "description": "...", "output_node": "6",
     "defaults": {"width": 768, "height": 1024},
     "prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "{{WIDTH}}", ...}}, ...}}

A string input that is exactly one placeholder is replaced by the typed value (``"{{SEED}}"``
becomes an int); a placeholder inside a longer string is replaced as text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

BUILTIN_DIR = Path(__file__).resolve().parent / "workflow_templates"
PLACEHOLDERS = (
    "PROMPT",
    "NEGATIVE_PROMPT",
    "SEED",
    "WIDTH",
    "HEIGHT",
    "FILENAME_PREFIX",
    # An asset placeholder: left in the filled graph, replaced by the worker (renders.assets).
    "INPUT_IMAGE",
)
# What an output node may write, by extension; a template's "output_ext" picks one.
OUTPUT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
}
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]*)\s*\}\}")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The size a page may ask for; ComfyUI's own limit is 16384, far beyond what a page needs.
MIN_SIZE, MAX_SIZE = 64, 4096


class WorkflowError(ValueError):
    """A template that cannot be used, with a message that says which and why."""


@dataclass(frozen=True)
class Workflow:
    slug: str
    title: str
    description: str
    output_node: str
    graph: dict[str, Any]
    defaults: dict[str, int] = field(default_factory=dict)
    path: Path | None = None
    output_ext: str = "png"
    output_mime: str = "image/png"

    def fill(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        seed: int,
        filename_prefix: str,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """A fresh API-format graph for one attempt, every placeholder replaced."""
        values: dict[str, str | int] = {
            "PROMPT": prompt,
            "NEGATIVE_PROMPT": negative_prompt,
            "SEED": seed,
            "WIDTH": width or self.defaults.get("width", 1024),
            "HEIGHT": height or self.defaults.get("height", 1024),
            "FILENAME_PREFIX": filename_prefix,
            "INPUT_IMAGE": "{{INPUT_IMAGE}}",
        }
        filled = _substitute(self.graph, values)
        assert isinstance(filled, dict)
        return filled


def _substitute(value: Any, values: dict[str, str | int]) -> Any:
    if isinstance(value, dict):
        return {key: _substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if isinstance(value, str):
        whole = _PLACEHOLDER_RE.fullmatch(value.strip())
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]), value)
    return value


def _placeholders_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_placeholders_in(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_placeholders_in(item) for item in value))
    if isinstance(value, str):
        return set(_PLACEHOLDER_RE.findall(value))
    return set()


def workflow_parse(text: str, *, slug: str, path: Path | None = None) -> Workflow:
    """Parse and check one template; raise WorkflowError naming the first problem found."""
    where = f"workflow {slug!r}" + (f" ({path})" if path else "")
    if not _SLUG_RE.match(slug):
        raise WorkflowError(f"{where}: the name must be lowercase letters, digits, - or _")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(f"{where}: expected a JSON object with 'prompt' and 'output_node'")
    graph = data.get("prompt")
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{where}: 'prompt' must be a non-empty API-format graph")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{where}: node {node_id!r} has no class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{where}: node {node_id!r} has inputs that are not an object")
    output_node = data.get("output_node")
    if not isinstance(output_node, str) or not output_node:
        raise WorkflowError(f"{where}: 'output_node' is missing (the node whose image is the page)")
    if output_node not in graph:
        raise WorkflowError(f"{where}: output node {output_node!r} is not in the graph")
    unknown = _placeholders_in(graph) - set(PLACEHOLDERS)
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in sorted(unknown))
        raise WorkflowError(
            f"{where}: unknown placeholder {names}; known: " + ", ".join("{{" + name + "}}" for name in PLACEHOLDERS)
        )
    # ComfyUI caches by inputs: without a per-attempt prefix a regenerate would be served from the
    # cache and point at the old file (API.md §6, §11.7).
    prefix = graph[output_node].get("inputs", {}).get("filename_prefix")
    if "FILENAME_PREFIX" not in _placeholders_in(prefix):
        raise WorkflowError(f'{where}: output node {output_node!r} must take filename_prefix "{{{{FILENAME_PREFIX}}}}"')
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or not all(
        key in ("width", "height") and isinstance(v, int) and MIN_SIZE <= v <= MAX_SIZE for key, v in defaults.items()
    ):
        raise WorkflowError(
            f"{where}: 'defaults' may set width and height, whole numbers from {MIN_SIZE} to {MAX_SIZE}"
        )
    output_ext = data.get("output_ext", "png")
    if output_ext not in OUTPUT_TYPES:
        raise WorkflowError(f"{where}: 'output_ext' must be one of {', '.join(OUTPUT_TYPES)}")
    output_mime = data.get("output_mime", OUTPUT_TYPES[output_ext])
    if output_mime != OUTPUT_TYPES[output_ext]:
        raise WorkflowError(f"{where}: 'output_mime' of a .{output_ext} output is {OUTPUT_TYPES[output_ext]}")
    return Workflow(
        slug=slug,
        title=str(data.get("title") or slug),
        description=str(data.get("description") or ""),
        output_node=output_node,
        graph=graph,
        defaults=defaults,
        path=path,
        output_ext=output_ext,
        output_mime=output_mime,
    )


def _template_dirs() -> list[Path]:
    dirs = [BUILTIN_DIR]
    if settings.BOOKRENDER_WORKFLOWS_DIR:
        dirs.append(Path(settings.BOOKRENDER_WORKFLOWS_DIR))
    return dirs


def workflow_load_all() -> tuple[dict[str, Workflow], list[WorkflowError]]:
    """Every template found, and the errors of those that could not be loaded."""
    found: dict[str, Workflow] = {}
    errors: list[WorkflowError] = []
    for directory in _template_dirs():
        if not directory.is_dir():
            errors.append(WorkflowError(f"workflow folder {directory} does not exist"))
            continue
        for path in sorted(directory.glob("*.json")):
            try:
                found[path.stem] = workflow_parse(path.read_text(), slug=path.stem, path=path)
            except (WorkflowError, OSError, UnicodeDecodeError) as exc:
                errors.append(WorkflowError(str(exc)))
    return found, errors


@cache
def _registry() -> dict[str, Workflow]:
    return workflow_load_all()[0]


def workflow_get(slug: str) -> Workflow:
    try:
        return _registry()[slug]
    except KeyError:
        raise WorkflowError(f"unknown workflow {slug!r}") from None


def workflow_choices() -> list[tuple[str, str]]:
    return [(slug, wf.title) for slug, wf in sorted(_registry().items())]
