"""ComfyUI API-format graphs: reading an upload, finding and filling placeholders, and checking a
graph against a live instance's ``/object_info``.

Substitution works on the parsed JSON, never on its text: a string input that is exactly one
placeholder becomes the typed value (``"{{SEED}}"`` becomes an int), a placeholder inside a longer
string is replaced as text, and a placeholder with no value (the asset placeholder the worker
fills) is left as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from renders.comfy import NodeClass
from workflows.properties import FILENAME_PREFIX, Property

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z0-9_]*)\s*\}\}")

# What to tell someone who uploaded the graph ComfyUI saves for its editor.
UI_FORMAT_HINT = (
    'This is ComfyUI\'s editor format (it has "nodes" and "links"), not the API format the '
    'server runs. In ComfyUI, open Settings, turn on "Enable Dev mode Options", then use '
    'Workflow > Export (API) (older versions: the "Save (API Format)" button) and upload that file.'
)


class GraphError(ValueError):
    """A graph that cannot be used; the message names the node and input."""


def graph_parse(text: str | bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API-format graph in an upload, and the bookrender keys around it (``output_node``,
    ``output_ext``, ``output_mime``, ``properties``, ``title``, ``description``) when the upload
    is a bookrender template ``{"prompt": {...}, ...}``. Refuses the editor format."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphError(f"the file is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        raise GraphError(UI_FORMAT_HINT)
    extras: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        extras = {key: value for key, value in data.items() if key != "prompt"}
        data = data["prompt"]
    if not isinstance(data, dict) or not data:
        raise GraphError('the file must be a JSON object of nodes: {"3": {"class_type": ..., "inputs": {...}}}')
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise GraphError(f"node {node_id!r} has no class_type: is this an API-format export?")
        if not isinstance(node.get("inputs", {}), dict):
            raise GraphError(f"node {node_id!r} ({node['class_type']}) has inputs that are not an object")
    return data, extras


def placeholders_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(placeholders_in(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholders_in(item) for item in value))
    if isinstance(value, str):
        return set(PLACEHOLDER_RE.findall(value))
    return set()


def substitute(value: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``value`` with every placeholder that has a value replaced (see the module
    docstring); placeholders without a value stay as they are."""
    if isinstance(value, dict):
        return {key: substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, values) for item in value]
    if isinstance(value, str):
        whole = PLACEHOLDER_RE.fullmatch(value.strip())
        if whole:
            return values.get(whole.group(1), value)
        return PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), value)
    return value


def graph_check(*, graph: dict[str, Any], output_node: str, properties: list[Property]) -> None:
    """The checks that need no ComfyUI: the output node, its per-attempt filename prefix, links
    to existing nodes, and placeholders (every one in the graph is declared, and every declared
    one is in the graph). Raises GraphError naming the first problem."""
    if output_node not in graph:
        raise GraphError(f"the output node {output_node!r} is not in the graph (its nodes: {', '.join(sorted(graph))})")
    for node_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if _is_link(value) and value[0] not in graph:
                where = f"node {node_id} ({node['class_type']}): input {name!r}"
                raise GraphError(f"{where} links to node {value[0]!r}, which is not in the graph")
    # ComfyUI caches by inputs: without a per-attempt prefix a regenerate would be served from the
    # cache and point at the old file (API.md §6, §11.7).
    prefix = graph[output_node].get("inputs", {}).get("filename_prefix")
    if FILENAME_PREFIX not in placeholders_in(prefix):
        raise GraphError(
            f"the output node {output_node} ({graph[output_node]['class_type']}) must take "
            f'filename_prefix "{{{{{FILENAME_PREFIX}}}}}" (each attempt writes its own file)'
        )
    used = placeholders_in(graph)
    declared = {p.placeholder for p in properties} | {FILENAME_PREFIX}
    unknown = sorted(used - declared)
    if unknown:
        raise GraphError(f"the graph uses {', '.join('{{' + n + '}}' for n in unknown)}, which no property declares")
    missing = sorted({p.placeholder for p in properties} - used)
    if missing:
        where = ", ".join(f"{{{{{n}}}}} ({_prop_for(properties, n)})" for n in missing)
        raise GraphError(f"the properties declare {where}, but the graph does not use it anywhere")


def _prop_for(properties: list[Property], placeholder: str) -> str:
    return next(p.name for p in properties if p.placeholder == placeholder)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def graph_check_live(*, graph: dict[str, Any], output_node: str, nodes: Mapping[str, NodeClass], server: str) -> None:
    """The checks against a live instance's ``/object_info``: every node class exists there, every
    required input is given, and the output node is a node ComfyUI runs as an output. Raises
    GraphError naming the node and input."""
    for node_id, node in sorted(graph.items(), key=lambda item: _node_order(item[0])):
        class_type = node["class_type"]
        info = nodes.get(class_type)
        if info is None:
            raise GraphError(
                f"node {node_id}: {server} has no node class {class_type!r} (a custom node that is not "
                f"installed there, or a typo)"
            )
        missing = sorted(info.required - set(node.get("inputs", {})))
        if missing:
            raise GraphError(
                f"node {node_id} ({class_type}): required input {', '.join(map(repr, missing))} is missing"
            )
    out_class = graph[output_node]["class_type"]
    if not nodes[out_class].is_output:
        raise GraphError(
            f"the output node {output_node} ({out_class}) is not an output node on {server}: ComfyUI would "
            f"not run it; choose the node that saves the result (SaveImage, SaveAnimatedWEBP, ...)"
        )


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)
