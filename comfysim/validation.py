"""POST /prompt validation, following execution.validate_prompt of ComfyUI 0.3.64.

The quirks are deliberate, because clients depend on them:
- a graph-level problem (no class_type, unknown class, no output node) stops at the first node;
- only nodes with their own errors appear in node_errors, a node downstream of a bad one does not;
- `error.details` joins the errors of the *output* nodes only, so it is often "";
- a link to a node that does not exist raises KeyError, reported on the node holding the link;
- constants are converted in place (INT "512" becomes 512), and the queue and history show that;
- one good output is enough for a 200; the bad branches are dropped, listed in node_errors.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfysim.nodes import Catalog, Folders, input_file_path

# Classes with a VALIDATE_INPUTS that replaces the combo check for these inputs.
CUSTOM_VALIDATED = {"LoadImage": ("image",), "LoadImageMask": ("image",)}

Reason = dict[str, Any]
Verdict = tuple[bool, list[Reason], str]


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None = None
    good_outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)


def _graph_error(kind: str, message: str, details: str, extra_info: dict[str, Any] | None = None) -> ValidationResult:
    return ValidationResult(
        ok=False, error={"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}
    )


def full_type_name(klass: type) -> str:
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return f"{module}.{klass.__qualname__}"


def is_canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def node_types_match(received: Any, expected: Any) -> bool:
    """comfy_execution.validation.validate_node_input: exact, '*' or a shared comma-separated type."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    received_types = {t.strip() for t in received.split(",")}
    expected_types = {t.strip() for t in expected.split(",")}
    if "*" in received_types or "*" in expected_types:
        return True
    return bool(received_types & expected_types)


class Validator:
    def __init__(self, prompt: dict[str, Any], catalog: Catalog, folders: Folders) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.folders = folders
        self.validated: dict[str, Verdict] = {}
        self._visiting: set[str] = set()

    def validate_inputs(self, unique_id: str) -> Verdict:
        if unique_id in self.validated:
            return self.validated[unique_id]
        if unique_id in self._visiting:
            # ComfyUI recurses until the interpreter gives up; the parent reports the failure.
            raise RecursionError("maximum recursion depth exceeded")
        self._visiting.add(unique_id)
        try:
            verdict = self._validate(unique_id)
        finally:
            self._visiting.discard(unique_id)
        self.validated[unique_id] = verdict
        return verdict

    def _validate(self, unique_id: str) -> Verdict:
        node = self.prompt[unique_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        class_inputs = self.catalog.input_types(class_type)
        custom = CUSTOM_VALIDATED.get(class_type, ())
        errors: list[Reason] = []
        valid = True

        names = [(name, "required") for name in class_inputs.get("required", {})]
        names += [(name, "optional") for name in class_inputs.get("optional", {})]
        for name, category in names:
            spec = class_inputs[category][name]
            type_input = spec[0]
            extra_info: dict[str, Any] = spec[1] if len(spec) > 1 else {}
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{name}",
                            "extra_info": {"input_name": name},
                        }
                    )
                continue

            val = inputs[name]
            info = [type_input, extra_info]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            "details": f"{name}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                o_id = val[0]
                o_class_type = self.prompt[o_id]["class_type"]
                received_type = self.catalog.return_types(o_class_type)[val[1]]
                if not node_types_match(received_type, type_input):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received_type}) mismatch input_type({type_input})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    if self.validate_inputs(o_id)[0] is False:
                        valid = False
                        continue
                except Exception as ex:
                    valid = False
                    self.validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": info,
                                    "exception_message": str(ex),
                                    "exception_type": full_type_name(type(ex)),
                                    "traceback": traceback.format_tb(ex.__traceback__),
                                    "linked_node": val,
                                },
                            }
                        ],
                        o_id,
                    )
                    continue
            else:
                try:
                    if type_input == "INT":
                        val = int(val)
                        inputs[name] = val
                    if type_input == "FLOAT":
                        val = float(val)
                        inputs[name] = val
                    if type_input == "STRING":
                        val = str(val)
                        inputs[name] = val
                    if type_input == "BOOLEAN":
                        val = bool(val)
                        inputs[name] = val
                except Exception as ex:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {type_input} value",
                            "details": f"{name}, {val}, {ex}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue

                if name in custom:
                    continue
                if "min" in extra_info and val < extra_info["min"]:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": f"Value {val} smaller than min of {extra_info['min']}",
                            "details": f"{name}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                if "max" in extra_info and val > extra_info["max"]:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": f"Value {val} bigger than max of {extra_info['max']}",
                            "details": f"{name}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                if isinstance(type_input, list) or type_input == "COMBO":
                    options = type_input if isinstance(type_input, list) else extra_info.get("options", [])
                    if val not in options:
                        input_config: list[Any] | None = info
                        # ComfyUI does not echo long lists (model folders) back.
                        if len(options) > 20:
                            list_info = f"(list of length {len(options)})"
                            input_config = None
                        else:
                            list_info = str(options)
                        errors.append(
                            {
                                "type": "value_not_in_list",
                                "message": "Value not in list",
                                "details": f"{name}: '{val}' not in {list_info}",
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": input_config,
                                    "received_value": val,
                                },
                            }
                        )
                        continue

        for name in custom:
            value = inputs.get(name)
            if isinstance(value, str) and not input_file_path(value, self.folders).exists():
                errors.append(
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"{name} - Invalid image file: {value}",
                        "extra_info": {"input_name": name},
                    }
                )

        if errors or valid is not True:
            return (False, errors, unique_id)
        return (True, [], unique_id)


def validate_prompt(
    prompt: Any,
    *,
    catalog: Catalog,
    folders: Folders,
    partial_targets: Any = None,
    newer_api: bool = False,
    injected: Mapping[str, Reason] | None = None,
) -> ValidationResult:
    """Validate a graph like ComfyUI; `injected` adds a simulated error to some nodes (faults)."""
    outputs: list[str] = []
    for node_id in prompt:
        node = prompt[node_id]
        title = node.get("_meta", {}).get("title") if isinstance(node.get("_meta"), dict) else None
        if "class_type" not in node:
            if newer_api:
                return _graph_error(
                    "missing_node_type",
                    f"Node '{title or node_id}' has no class_type. "
                    "The workflow may be corrupted or a custom node is missing.",
                    f"Node ID '#{node_id}'",
                    {"node_id": node_id, "class_type": None, "node_title": title or node_id},
                )
            return _graph_error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
        class_type = node["class_type"]
        if class_type not in catalog:
            if newer_api:
                return _graph_error(
                    "missing_node_type",
                    f"Node '{title or class_type}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    {"node_id": node_id, "class_type": class_type, "node_title": title or class_type},
                )
            return _graph_error(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
        if catalog.is_output(class_type) and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)

    if not outputs:
        return _graph_error("prompt_no_outputs", "Prompt has no outputs", "")

    validator = Validator(prompt, catalog, folders)
    for node_id, reason in (injected or {}).items():
        validator.validated[node_id] = (False, [reason], node_id)

    good_outputs: list[str] = []
    failed: list[tuple[str, list[Reason]]] = []
    node_errors: dict[str, dict[str, Any]] = {}
    for output in outputs:
        try:
            valid, reasons, _ = validator.validate_inputs(output)
        except Exception as ex:
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {
                        "exception_type": full_type_name(type(ex)),
                        "traceback": traceback.format_tb(ex.__traceback__),
                    },
                }
            ]
            validator.validated[output] = (False, reasons, output)
        if valid is True:
            good_outputs.append(output)
            continue
        failed.append((output, reasons))
        # ComfyUI walks every node validated so far, so an earlier bad node also collects this
        # output as a dependent even when the two are not connected. Kept for fidelity.
        for node_id, (ok, node_reasons, _) in validator.validated.items():
            if ok is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(output)

    if not good_outputs:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
        return ValidationResult(
            ok=False,
            error={
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details,
                "extra_info": {},
            },
            node_errors=node_errors,
        )
    return ValidationResult(ok=True, good_outputs=good_outputs, node_errors=node_errors)


def ancestors(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    """node_id and every node it links to, directly or not (dangling links are skipped)."""
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        node = prompt[current]
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        for value in inputs.values() if isinstance(inputs, Mapping) else ():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                stack.append(value[0])
    return seen


def simulated_rejection(prompt: Mapping[str, Any], catalog: Catalog, *, marker_only: bool) -> dict[str, Reason]:
    """The error(s) a `validation` fault injects: on the node carrying `[sim:validation]`, or on a
    node every output depends on, so that the whole prompt is refused."""
    for node_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, str) and "[sim:validation]" in value:
                return {node_id: _simulated_reason(name, "[sim:validation] marker")}
    if marker_only:
        return {}
    outputs = [n for n, node in prompt.items() if catalog.is_output(node["class_type"])]
    common = set(prompt)
    for output in outputs:
        common &= ancestors(prompt, output)
    for node_id, node in prompt.items():
        if node_id in common:
            constants = [k for k, v in node.get("inputs", {}).items() if not isinstance(v, list)]
            return {node_id: _simulated_reason(constants[0] if constants else "inputs", "simulated validation fault")}
    return {output: _simulated_reason("inputs", "simulated validation fault") for output in outputs}


def _simulated_reason(input_name: str, why: str) -> Reason:
    return {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": f"{input_name} - {why}",
        "extra_info": {"input_name": input_name},
    }
