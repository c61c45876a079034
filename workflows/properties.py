"""Typed properties of a workflow version: what a style fixes, what a person chooses, and the
placeholder each value fills.

A version declares its properties as a JSON list (the admin's "Properties" field)::

    [{"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": true, "max_length": 4000},
     {"name": "steps", "kind": "integer", "placeholder": "STEPS", "default": 20, "min": 1, "max": 60},
     {"name": "sampler", "kind": "choice", "placeholder": "SAMPLER", "default": "euler",
      "choices": ["euler", "dpmpp_2m"]}]

Exactly one property is the primary input: a page's prompt (kind ``text``) or a page's image
(kind ``image``, placeholder ``INPUT_IMAGE``, replaced by the worker with the uploaded file's name).
A ``seed`` without a default draws a fresh random seed for every attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

KINDS = ("text", "integer", "float", "seed", "choice", "boolean", "image")
# Filled by the worker for every attempt; never a property.
FILENAME_PREFIX = "FILENAME_PREFIX"
# The asset placeholder: the worker uploads the page's image and puts its name here.
INPUT_IMAGE = "INPUT_IMAGE"
SEED_MAX = 2**64 - 1  # KSampler's own limit (0xffffffffffffffff)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_PLACEHOLDER_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")

Value = str | int | float | bool | None


class PropertyError(ValueError):
    """A property declaration or a value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Property:
    name: str
    kind: str
    placeholder: str
    label: str = ""
    help: str = ""
    primary: bool = False
    default: Value = None
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    @property
    def limits(self) -> str:
        """The limits in words, for help texts and error messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind in ("integer", "float", "seed"):
            low = _number(self.min if self.min is not None else (0 if self.kind == "seed" else None))
            high = _number(self.max if self.max is not None else (SEED_MAX if self.kind == "seed" else None))
            whole = "a whole number" if self.kind != "float" else "a number"
            if low is not None and high is not None:
                return f"{whole} from {low} to {high}"
            if low is not None:
                return f"{whole} of at least {low}"
            if high is not None:
                return f"{whole} of at most {high}"
            return whole
        if self.kind == "text" and self.max_length:
            return f"at most {self.max_length} characters"
        return ""

    def check(self, value: Any) -> Value:
        """The value as this property's type, or PropertyError saying what is wrong with it.
        Accepts what a form or a JSON document sends: numbers as text, "on"/"true" for booleans."""
        where = self.title
        if self.kind in ("integer", "seed"):
            if isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise PropertyError(f"{where} must be a whole number, not {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, int):
                raise PropertyError(f"{where} must be a whole number")
            low = self.min if self.min is not None else (0 if self.kind == "seed" else None)
            high = self.max if self.max is not None else (SEED_MAX if self.kind == "seed" else None)
            if (low is not None and value < low) or (high is not None and value > high):
                raise PropertyError(f"{where} is {value}: it must be {self.limits}")
            return value
        if self.kind == "float":
            if isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    raise PropertyError(f"{where} must be a number, not {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise PropertyError(f"{where} must be a number")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise PropertyError(f"{where} is {_number(value)}: it must be {self.limits}")
            return float(value)
        if self.kind == "boolean":
            if isinstance(value, str) and value.strip().lower() in ("on", "true", "1", "yes"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("", "off", "false", "0", "no"):
                return False
            if not isinstance(value, bool):
                raise PropertyError(f"{where} must be true or false")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise PropertyError(f"{where} is {value!r}: it must be {self.limits}")
            return str(value)
        if self.kind == "text":
            if not isinstance(value, str):
                raise PropertyError(f"{where} must be text")
            if self.max_length and len(value) > self.max_length:
                raise PropertyError(f"{where} is {len(value)} characters long: it must be {self.limits}")
            return value
        raise PropertyError(f"{where} is an image: it comes from the page, not from a value")


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def properties_parse(data: Any) -> list[Property]:
    """The properties of a version from their JSON declaration; PropertyError names the first
    problem found."""
    if not isinstance(data, list) or not data:
        raise PropertyError("properties must be a non-empty JSON list of objects")
    found: list[Property] = []
    for index, item in enumerate(data, start=1):
        found.append(_property_parse(item, index))
    names = [p.name for p in found]
    placeholders = [p.placeholder for p in found]
    for label, values in (("name", names), ("placeholder", placeholders)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise PropertyError(f"the {label} {twice[0]!r} is used by more than one property")
    primary = [p for p in found if p.primary]
    if len(primary) != 1:
        listed = ", ".join(p.name for p in primary) or "none"
        raise PropertyError(
            f"exactly one property must be the primary input (a page's prompt or image); found {listed}"
        )
    if primary[0].kind not in ("text", "image"):
        raise PropertyError(
            f"the primary input {primary[0].name!r} is a {primary[0].kind}: it must be text (the page's "
            f"prompt) or image (the page's image)"
        )
    images = [p for p in found if p.kind == "image"]
    if any(not p.primary for p in images):
        raise PropertyError("an image property must be the primary input (the page's image)")
    if images and images[0].placeholder != INPUT_IMAGE:
        raise PropertyError(f"the image input's placeholder must be {INPUT_IMAGE} (the worker fills it)")
    if len([p for p in found if p.kind == "seed"]) > 1:
        raise PropertyError("a workflow has at most one seed property (the one each attempt records)")
    return found


def _property_parse(item: Any, index: int) -> Property:
    if not isinstance(item, dict):
        raise PropertyError(f"property {index} must be an object")
    known = {
        "name",
        "kind",
        "placeholder",
        "label",
        "help",
        "primary",
        "default",
        "min",
        "max",
        "max_length",
        "choices",
    }
    unknown = sorted(set(item) - known)
    name = item.get("name")
    where = f"property {name!r}" if isinstance(name, str) else f"property {index}"
    if unknown:
        raise PropertyError(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PropertyError(f"{where}: the name must be lowercase letters, digits and _ (like negative_prompt)")
    kind = item.get("kind")
    if kind not in KINDS:
        raise PropertyError(f"{where}: the kind must be one of {', '.join(KINDS)}")
    placeholder = item.get("placeholder")
    if not isinstance(placeholder, str) or not _PLACEHOLDER_RE.match(placeholder):
        raise PropertyError(f"{where}: the placeholder must be upper-case letters, digits and _ (like PROMPT)")
    if placeholder == FILENAME_PREFIX:
        raise PropertyError(f"{where}: {FILENAME_PREFIX} is filled by the worker for every attempt")
    for key in ("min", "max"):
        if key in item and (isinstance(item[key], bool) or not isinstance(item[key], (int, float))):
            raise PropertyError(f"{where}: {key} must be a number")
    if "min" in item and "max" in item and item["min"] > item["max"]:
        raise PropertyError(f"{where}: min is more than max")
    max_length = item.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise PropertyError(f"{where}: max_length must be a positive whole number")
    choices = item.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise PropertyError(f"{where}: choices must be a list of strings")
    if kind == "choice" and not choices:
        raise PropertyError(f"{where}: a choice needs a list of choices")
    prop = Property(
        name=name,
        kind=kind,
        placeholder=placeholder,
        label=str(item.get("label") or ""),
        help=str(item.get("help") or ""),
        primary=bool(item.get("primary", False)),
        min=item.get("min"),
        max=item.get("max"),
        max_length=max_length,
        choices=tuple(choices),
    )
    default = item.get("default")
    if default is not None and kind != "image":
        try:
            default = prop.check(default)
        except PropertyError as exc:
            raise PropertyError(f"{where}: the default is not allowed: {exc}") from None
    elif kind not in ("seed", "text", "image") and not prop.primary:
        raise PropertyError(f"{where}: a {kind} needs a default")
    return replace(prop, default=default)


def properties_dump(props: list[Property]) -> list[dict[str, Any]]:
    """The JSON declaration of ``props`` (what ``properties_parse`` reads back)."""
    out = []
    for p in props:
        item: dict[str, Any] = {"name": p.name, "kind": p.kind, "placeholder": p.placeholder}
        if p.label:
            item["label"] = p.label
        if p.help:
            item["help"] = p.help
        if p.primary:
            item["primary"] = True
        for key in ("default", "min", "max", "max_length"):
            if getattr(p, key) is not None:
                item[key] = getattr(p, key)
        if p.choices:
            item["choices"] = list(p.choices)
        out.append(item)
    return out


def values_check(
    props: list[Property], values: dict[str, Any], *, fixed: dict[str, Any] | None = None
) -> dict[str, Value]:
    """``values`` checked against ``props``: unknown names, the primary input and fixed properties
    are refused. Raises PropertyError with one message per bad value, keyed by property name."""
    by_name = {p.name: p for p in props}
    errors: dict[str, str] = {}
    checked: dict[str, Value] = {}
    for name, raw in values.items():
        prop = by_name.get(name)
        if prop is None:
            errors[name] = f"there is no property {name!r}; known: {', '.join(sorted(by_name))}"
        elif prop.primary:
            errors[name] = f"{prop.title} is the page's own input, not a setting"
        elif fixed and name in fixed:
            errors[name] = f"{prop.title} is fixed by the style"
        elif raw is None or raw == "":
            continue
        else:
            try:
                checked[name] = prop.check(raw)
            except PropertyError as exc:
                errors[name] = str(exc)
    if errors:
        raise PropertyValuesError(errors)
    return checked


class PropertyValuesError(PropertyError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors
