"""The worker's asset pipeline: a page's input image goes to the ComfyUI instance that renders it,
and the asset placeholder ``{{INPUT_IMAGE}}`` in the filled graph becomes the name ComfyUI gave it.

Text placeholders are filled from the page (``renders.workflows``); asset placeholders are left
for here because only the worker knows the instance, and the file has to be on it first (seed 001:
"asset placeholders are replaced in the worker before prompt execution")."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage

from books.models import BookPage
from books.storage import STORAGE_ERRORS, StorageUnavailable
from renders.comfy import ComfyClient, ComfyError, ErrorKind

INPUT_PLACEHOLDER = "{{INPUT_IMAGE}}"


def graph_needs_input(graph: Any) -> bool:
    if isinstance(graph, dict):
        return any(graph_needs_input(value) for value in graph.values())
    if isinstance(graph, list):
        return any(graph_needs_input(value) for value in graph)
    return isinstance(graph, str) and graph.strip() == INPUT_PLACEHOLDER


def graph_with_input(graph: Any, name: str) -> Any:
    """A copy of the graph with every ``{{INPUT_IMAGE}}`` input replaced by ``name``."""
    if isinstance(graph, dict):
        return {key: graph_with_input(value, name) for key, value in graph.items()}
    if isinstance(graph, list):
        return [graph_with_input(value, name) for value in graph]
    if isinstance(graph, str) and graph.strip() == INPUT_PLACEHOLDER:
        return name
    return graph


def input_upload(*, page: BookPage, client: ComfyClient) -> str:
    """Upload the page's input image to the instance; the name LoadImage takes.

    Raises ComfyError (validation, not retried: the page has no input image; or what the upload
    raised) and StorageUnavailable (the storage did not answer: wait and try again)."""
    stored = str(page.input_image.name or "")
    if not stored:
        raise ComfyError(
            ErrorKind.VALIDATION,
            "this workflow starts from an input image, and the page has none: add one (Edit page)",
            retryable=False,
        )
    try:
        with default_storage.open(stored, "rb") as source:
            data = source.read()
    except STORAGE_ERRORS as exc:
        raise StorageUnavailable(f"cannot read the input image {stored}: {type(exc).__name__}") from exc
    # The stored name is the content's hash, so the same picture has the same name on every
    # instance, and overwriting it writes the same bytes.
    filename = "bookrender-" + stored.rsplit("/", 1)[-1]
    uploaded = client.upload_image(data, filename=filename, subfolder="bookrender")
    return uploaded
