"""Workflow template files: an API-format graph with placeholders, its output node and its typed
properties, in one JSON document. The built-in ones (``renders/workflow_templates/``) are seeded
into the workflow registry (workflows/), and ``manage.py import_workflows DIR`` registers others::

    {"title": "...", "description": "...", "output_node": "6",
     "output_ext": "png", "output_mime": "image/png",
     "defaults": {"width": 768, "height": 1024},
     "properties": [...],
     "prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "{{WIDTH}}", ...}}, ...}}

Without ``properties``, a template declares the classic ones for the placeholders it uses:
``{{PROMPT}}`` (the primary input), ``{{NEGATIVE_PROMPT}}``, ``{{SEED}}``, ``{{WIDTH}}`` and
``{{HEIGHT}}`` (with ``defaults`` as their defaults). Renders use the registry, not these files;
the load test and the benchmarks read the files directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflows.graphs import GraphError, graph_check, graph_parse, placeholders_in, substitute
from workflows.properties import Property, PropertyError, properties_dump, properties_parse

BUILTIN_DIR = Path(__file__).resolve().parent / "workflow_templates"
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The size a page may ask for; ComfyUI's own limit is 16384, far beyond what a page needs.
MIN_SIZE, MAX_SIZE = 64, 4096
MAX_PROMPT_CHARS = 4000
# What an output node may write, by extension; a template's "output_ext" picks one.
OUTPUT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
}


class WorkflowError(ValueError):
    """A template that cannot be used, with a message that says which and why."""


@dataclass(frozen=True)
class Workflow:
    slug: str
    title: str
    description: str
    output_node: str
    graph: dict[str, Any]
    properties: tuple[Property, ...]
    output_ext: str = "png"
    output_mime: str = "image/png"
    path: Path | None = None

    def fill_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """A fresh API-format graph with every placeholder that has a value replaced."""
        filled = substitute(self.graph, values)
        assert isinstance(filled, dict)
        return filled

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
        """The classic placeholders filled (the load test, the benchmarks and the simulator's
        tests): a fresh graph for one attempt."""
        values = {p.placeholder: p.default for p in self.properties if p.default is not None}
        return self.fill_values(
            {
                **values,
                "PROMPT": prompt,
                "NEGATIVE_PROMPT": negative_prompt,
                "SEED": seed,
                "WIDTH": width or values.get("WIDTH") or 1024,
                "HEIGHT": height or values.get("HEIGHT") or 1024,
                "FILENAME_PREFIX": filename_prefix,
            }
        )

    @property
    def properties_json(self) -> list[dict[str, Any]]:
        return properties_dump(list(self.properties))


def classic_properties(graph: dict[str, Any], defaults: dict[str, int]) -> list[dict[str, Any]]:
    """The property declarations of a template without ``properties``: one for each classic
    placeholder the graph uses."""
    used = placeholders_in(graph)
    classic: list[dict[str, Any]] = [
        {"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True, "max_length": MAX_PROMPT_CHARS},
        {"name": "negative_prompt", "kind": "text", "placeholder": "NEGATIVE_PROMPT", "label": "Negative prompt",
         "default": "", "max_length": MAX_PROMPT_CHARS},
        {"name": "seed", "kind": "seed", "placeholder": "SEED", "min": 0, "max": 2**32 - 1,
         "help": "Empty: a new random seed each render."},
        {"name": "width", "kind": "integer", "placeholder": "WIDTH", "label": "Width (px)",
         "default": defaults.get("width", 1024), "min": MIN_SIZE, "max": MAX_SIZE},
        {"name": "height", "kind": "integer", "placeholder": "HEIGHT", "label": "Height (px)",
         "default": defaults.get("height", 1024), "min": MIN_SIZE, "max": MAX_SIZE},
    ]  # fmt: skip
    return [item for item in classic if item["placeholder"] in used]


def workflow_parse(text: str, *, slug: str, path: Path | None = None) -> Workflow:
    """Parse and check one template; raise WorkflowError naming the first problem found."""
    where = f"workflow {slug!r}" + (f" ({path})" if path else "")
    if not _SLUG_RE.match(slug):
        raise WorkflowError(f"{where}: the name must be lowercase letters, digits, - or _")
    try:
        graph, extras = graph_parse(text)
    except GraphError as exc:
        raise WorkflowError(f"{where}: {exc}") from None
    if not extras:
        raise WorkflowError(f"{where}: expected a JSON object with 'prompt' (the API-format graph) and 'output_node'")
    output_node = extras.get("output_node")
    if not isinstance(output_node, str) or not output_node:
        raise WorkflowError(f"{where}: 'output_node' is missing (the node whose image is the page)")
    defaults = extras.get("defaults", {})
    if not isinstance(defaults, dict) or not all(
        key in ("width", "height") and isinstance(v, int) and MIN_SIZE <= v <= MAX_SIZE for key, v in defaults.items()
    ):
        raise WorkflowError(
            f"{where}: 'defaults' may set width and height, whole numbers from {MIN_SIZE} to {MAX_SIZE}"
        )
    declared = extras.get("properties")
    try:
        properties = properties_parse(declared if declared is not None else classic_properties(graph, defaults))
        graph_check(graph=graph, output_node=output_node, properties=properties)
    except (GraphError, PropertyError) as exc:
        raise WorkflowError(f"{where}: {exc}") from None
    output_ext = extras.get("output_ext", "png")
    if output_ext not in OUTPUT_TYPES:
        raise WorkflowError(f"{where}: 'output_ext' must be one of {', '.join(OUTPUT_TYPES)}")
    output_mime = extras.get("output_mime", OUTPUT_TYPES[output_ext])
    if output_mime != OUTPUT_TYPES[output_ext]:
        raise WorkflowError(f"{where}: 'output_mime' of a .{output_ext} output is {OUTPUT_TYPES[output_ext]}")
    return Workflow(
        slug=slug,
        title=str(extras.get("title") or slug),
        description=str(extras.get("description") or ""),
        output_node=output_node,
        graph=graph,
        properties=tuple(properties),
        output_ext=output_ext,
        output_mime=output_mime,
        path=path,
    )


def workflow_load_dir(directory: Path) -> tuple[list[Workflow], list[WorkflowError]]:
    """Every template in a folder, and the errors of those that could not be loaded."""
    found: list[Workflow] = []
    errors: list[WorkflowError] = []
    if not directory.is_dir():
        return [], [WorkflowError(f"workflow folder {directory} does not exist")]
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(workflow_parse(path.read_text(), slug=path.stem, path=path))
        except (WorkflowError, OSError, UnicodeDecodeError) as exc:
            errors.append(WorkflowError(str(exc)))
    return found, errors


def template_load(slug: str) -> Workflow:
    """A built-in template file (the load test, the benchmarks, the simulator's tests)."""
    path = BUILTIN_DIR / f"{slug}.json"
    try:
        return workflow_parse(path.read_text(), slug=slug, path=path)
    except FileNotFoundError:
        raise WorkflowError(f"no built-in template {slug!r}") from None
