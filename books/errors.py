"""What a page's render error means: in words a book's owner understands, with advice, and in
one technical line for support.

The pipeline stores each failed attempt as an ``image_error`` entry (see ``BookPage.image_error``):
``{attempt, kind, message, node_id, node_type, exception_type, instance, at}``. The kind says what
went wrong; the message is ComfyUI's own text, which the status page folds under "Details".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# renders.comfy words a timeout "prompt <id> did not finish within 600 s (cancelled on ComfyUI)".
_TIMEOUT_SECONDS_RE = re.compile(r"within ([0-9.]+) ?s\b")


# What happened, per kind, in words an illustrator understands; node names and exception types
# stay in the technical line under "Details".
_PLAIN = {
    "oom": "The graphics card ran out of memory while drawing this page.",
    "validation": "The image server could not use this page's settings.",
    "unavailable": "The image server could not be reached, or lost the page while drawing it.",
    "timeout": "Drawing this page took too long and was stopped.",
    "execution": "Something went wrong inside the image server while drawing this page.",
    "interrupted": "Drawing this page was stopped on the image server before it finished.",
    "protocol": "The image server sent back something bookrender could not read.",
    "low_vram": "The graphics card never had enough free memory to start this page.",
    "no_output": "The image server finished, but the workflow's output step produced no file.",
}
_UNKNOWN = "Drawing this page failed for a reason bookrender does not recognise."

# What to do about it: (while bookrender is still retrying, once it has given up).
_ADVICE = {
    "oom": (
        "Usually temporary when the graphics card is busy: bookrender tries again by itself.",
        "Usually temporary: regenerate the page. If it keeps happening, make the page smaller (Edit page).",
    ),
    "validation": (
        "bookrender tries once more; if it fails again, change the page's settings.",
        "Change the prompt, size or seed (Edit page) and render again. If they look right, tell support: "
        "a model the workflow needs may be missing.",
    ),
    "unavailable": (
        "Usually temporary: bookrender tries again by itself, on another server if there is one.",
        "Usually temporary: regenerate the page in a few minutes. If it keeps happening, tell support.",
    ),
    "timeout": (
        "Usually temporary when many pages are waiting: bookrender tries again by itself.",
        "Regenerate the page. Very large sizes draw slowly: a smaller size helps (Edit page).",
    ),
    "execution": (
        "bookrender tries again by itself.",
        "Regenerate the page. If it fails the same way, change the prompt (Edit page); "
        "support can read the technical details below.",
    ),
    "interrupted": (
        "bookrender tries again by itself.",
        "Regenerate the page when you want it drawn.",
    ),
    "protocol": (
        "Usually temporary: bookrender tries again by itself.",
        "Regenerate the page. If it keeps happening, tell support.",
    ),
    "no_output": (
        "bookrender tries again by itself.",
        "Regenerate the page. If it fails the same way, tell support: the workflow may be set up wrongly.",
    ),
    "low_vram": (
        "Usually temporary while other pages use the graphics card: bookrender waits and tries again by itself.",
        "Usually temporary: regenerate the page later. A smaller size needs less memory (Edit page).",
    ),
}
_UNKNOWN_ADVICE = ("bookrender tries again by itself.", "Regenerate the page; if it keeps failing, tell support.")


# What a book's owner may see of an ``image_error`` entry. The rest (ComfyUI's URL, the raw
# message and exception) describes our machines, and is for staff.
PUBLIC_FIELDS = ("attempt", "kind", "node_id", "node_type", "at")


def error_public(entry: Mapping[str, object]) -> dict[str, object]:
    """The entry without internal URLs and raw exception text, with its meaning in words."""
    return {
        **{key: entry[key] for key in PUBLIC_FIELDS if key in entry},
        "text": error_in_plain_words(entry),
        "details": error_technical(entry, internals=False),
    }


def error_in_plain_words(entry: Mapping[str, object]) -> str:
    """What happened, in one sentence without jargon, for a book's owner."""
    return _PLAIN.get(str(entry.get("kind") or ""), _UNKNOWN)


def error_advice(entry: Mapping[str, object], *, retrying: bool) -> str:
    """What to do about it; ``retrying`` while bookrender will try again by itself."""
    while_retrying, after = _ADVICE.get(str(entry.get("kind") or ""), _UNKNOWN_ADVICE)
    return while_retrying if retrying else after


def error_technical(entry: Mapping[str, object], *, internals: bool = True) -> str:
    """One technical line for one ``image_error`` entry, for support and the folded details, for
    example "ComfyUI ran out of GPU memory on node 12 (KSampler)". Without ``internals`` (for people
    who are not staff) it never names a ComfyUI instance or repeats an unknown error's raw message."""
    kind = str(entry.get("kind") or "")
    message = str(entry.get("message") or "").strip()
    instance = str(entry.get("instance") or "") if internals else ""
    on_node = f" on {node}" if (node := _node(entry)) else ""
    at_instance = f" at {instance}" if instance else ""
    if kind == "oom":
        return f"ComfyUI ran out of GPU memory{on_node}"
    if kind == "validation":
        # ComfyUI's validation messages name the input ("Value not in list: ckpt_name: ..."),
        # which is the useful part; the node is added when ComfyUI named it.
        reason = message.rstrip(".") or "the workflow is invalid"
        return f"ComfyUI refused the workflow: {reason}{on_node}"
    if kind == "unavailable":
        return f"ComfyUI{at_instance} could not be reached, or lost the render"
    if kind == "timeout":
        match = _TIMEOUT_SECONDS_RE.search(message)
        limit = f" than {_seconds(match.group(1))}" if match else ""
        return f"The render took longer{limit} and was cancelled"
    if kind == "execution":
        exception = str(entry.get("exception_type") or "")
        what = f" ({exception})" if exception else ""
        return f"ComfyUI failed while rendering{on_node}{what}"
    if kind == "interrupted":
        return f"The render was interrupted on ComfyUI{on_node}"
    if kind == "protocol":
        return f"ComfyUI{at_instance} answered something unreadable"
    if kind == "low_vram":
        return "The GPU never had enough free memory to start this page"
    return (message if internals else "") or "The render failed for an unknown reason"


def _node(entry: Mapping[str, object]) -> str:
    node_id, node_type = entry.get("node_id"), entry.get("node_type")
    if node_id and node_type:
        return f"node {node_id} ({node_type})"
    if node_id:
        return f"node {node_id}"
    return str(node_type or "")


def _seconds(text: str) -> str:
    seconds = float(text)
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"
