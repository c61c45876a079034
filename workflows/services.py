"""The workflow registry's services: register a version (checked against a live ComfyUI), pick a
style for a new book, and give the worker a page's filled graph.

A page's values, first to last (later wins): the book's values (recorded when it was created: the
version's defaults, the style's fixed values and what its owner chose), the page's own overrides,
the page's negative prompt, and the primary input (the page's prompt; an image input stays
``{{INPUT_IMAGE}}`` for the worker to fill once it has uploaded the image)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Max

from renders.comfy import ComfyClient, ComfyError, NodeClass
from workflows.graphs import GraphError, graph_check, graph_check_live, substitute
from workflows.models import Style, Workflow, WorkflowVersion
from workflows.properties import (
    FILENAME_PREFIX,
    Property,
    PropertyError,
    Value,
    properties_parse,
    values_check,
)

if TYPE_CHECKING:
    from books.models import Book, BookPage

# Random seeds are drawn below 2**32: every sampler takes them, and people can type them back.
RANDOM_SEED_MAX = 2**32 - 1


class StyleError(ValueError):
    """A style that cannot be used for a new book; the message says why, in words for its user."""


@dataclass(frozen=True)
class FilledWorkflow:
    """What the worker submits for one attempt, and where it finds the result."""

    graph: dict[str, Any]
    output_node: str
    output_ext: str
    output_mime: str
    version: str  # "model-free v1", for RenderAttempt.workflow and the logs


# --- registering ----------------------------------------------------------------------------------


def instance_for_checks() -> str:
    """The URL of a ComfyUI instance to check workflows against: an enabled one that is up."""
    from renders.models import ComfyInstance

    instance = (
        ComfyInstance.objects.filter(enabled=True, state=ComfyInstance.State.UP).order_by("pk").first()
        or ComfyInstance.objects.filter(enabled=True).order_by("pk").first()
    )
    if instance is None:
        raise GraphError(
            "no ComfyUI instance is registered to check the workflow against: add one (COMFYUI_URLS, "
            "or Admin > Renders > ComfyUI instances)"
        )
    return instance.url


def node_classes_fetch(url: str) -> dict[str, NodeClass]:
    try:
        return ComfyClient(url, timeout=10.0).object_info()
    except ComfyError as exc:
        raise GraphError(f"could not read /object_info from {url} to check the workflow: {exc.message}") from None


def version_check(
    *, graph: dict[str, Any], output_node: str, properties: Any, server: str | None
) -> tuple[list[Property], str]:
    """The parsed properties and the server checked against, or GraphError/PropertyError naming
    the first problem. ``server=None`` checks against the first instance that is up."""
    props = properties_parse(properties)
    graph_check(graph=graph, output_node=output_node, properties=props)
    url = server or instance_for_checks()
    graph_check_live(graph=graph, output_node=output_node, nodes=node_classes_fetch(url), server=url)
    return props, url


def version_create(
    *,
    workflow: Workflow,
    graph: dict[str, Any],
    output_node: str,
    properties: Any,
    output_ext: str = "png",
    output_mime: str = "image/png",
    notes: str = "",
    checked_on: str = "",
) -> WorkflowVersion:
    """Register the next version of ``workflow`` (checked already: see ``version_check``)."""
    properties_parse(properties)
    with transaction.atomic():
        # Lock the workflow row: two uploads at once get consecutive numbers, not a clash.
        Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
        latest = workflow.versions.aggregate(n=Max("number"))["n"] or 0
        return WorkflowVersion.objects.create(
            workflow=workflow,
            number=latest + 1,
            graph=graph,
            output_node=output_node,
            output_ext=output_ext,
            output_mime=output_mime,
            properties=properties,
            notes=notes,
            checked_on=checked_on,
        )


def style_overrides_check(*, version: WorkflowVersion, overrides: Any) -> dict[str, Value]:
    """A style's fixed values, checked against its version's properties."""
    if not isinstance(overrides, dict):
        raise PropertyError('the fixed values must be a JSON object, like {"steps": 30}')
    return values_check(version.props, overrides)


def graphs_in_use() -> list[tuple[str, dict[str, Any]]]:
    """The graphs ComfyUI must be able to run, labelled "slug vN": every version an active style
    uses, and the latest version of each active workflow. Without a database (a GPU host that
    installs ComfyUI before it can reach one), the built-in templates."""
    from django.db import DatabaseError

    from renders.workflows import BUILTIN_DIR, workflow_load_dir

    try:
        versions = set(
            WorkflowVersion.objects.filter(styles__is_active=True, workflow__is_active=True).select_related("workflow")
        )
        for workflow in Workflow.objects.filter(is_active=True):
            latest = workflow.versions.select_related("workflow").order_by("-number").first()
            if latest is not None:
                versions.add(latest)
        return sorted((str(v), v.graph) for v in versions)
    except DatabaseError:
        return [(t.slug, t.graph) for t in workflow_load_dir(BUILTIN_DIR)[0]]


# --- new books ------------------------------------------------------------------------------------


def styles_offered() -> list[Style]:
    """The styles the New book form offers: active, on an active workflow."""
    return list(
        Style.objects.filter(is_active=True, version__workflow__is_active=True).select_related("version__workflow")
    )


def style_get_offered(slug: str) -> Style:
    style = Style.objects.select_related("version__workflow").filter(slug=slug).first()
    if style is None:
        raise StyleError(f"there is no style {slug!r}")
    if not style.offered:
        raise StyleError(f"the style “{style.name}” is not available for new books any more; choose another")
    return style


def book_values(*, style: Style, chosen: dict[str, Any]) -> dict[str, Value]:
    """The values a new book records: the version's defaults, the style's fixed values and the
    owner's choices (checked: PropertyValuesError maps each bad one to its message)."""
    props = style.version.props
    checked = values_check(props, chosen, fixed=style.overrides)
    values: dict[str, Value] = {p.name: p.default for p in props if not p.primary}
    values.update(style.overrides)
    values.update(checked)
    return values


def page_overrides_check(
    *, version: WorkflowVersion, fixed: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Value]:
    """A page's own values, checked (PropertyValuesError); empty ones are dropped."""
    return values_check(version.props, overrides, fixed=fixed)


def workflow_graph(slug: str) -> dict[str, Any]:
    """The graph of a registered workflow's newest version (what a fleet must be able to run).
    Raises WorkflowError for a slug nobody registered."""
    from renders.workflows import WorkflowError

    version = WorkflowVersion.objects.filter(workflow__slug=slug).order_by("-number").first()
    if version is None:
        raise WorkflowError(f"no workflow {slug!r} is registered")
    graph: dict[str, Any] = version.graph
    return graph


def workflow_choices() -> list[tuple[str, str]]:
    """(slug, name) of every registered workflow, for choosing one in a form."""
    return [(slug, name) for slug, name in Workflow.objects.order_by("name").values_list("slug", "name")]


# --- the worker -----------------------------------------------------------------------------------


# Versions never change once registered, so each worker process keeps the ones it renders (their
# graph and parsed properties) instead of reading and parsing them for every page. An entry is
# known by its id and creation time (a flushed database, as the benchmarks make, reuses ids), and
# read again after VERSION_CACHE_SEC: its workflow's name and slug can be edited in the admin.
VERSION_CACHE_SEC = 30.0
_versions: dict[tuple[int, datetime], tuple[WorkflowVersion, float]] = {}


def version_get_cached(version_id: int, created_at: datetime) -> WorkflowVersion:
    """The version with its workflow, from this process's cache (see VERSION_CACHE_SEC)."""
    key = (version_id, created_at)
    cached = _versions.get(key)
    if cached is not None and time.monotonic() - cached[1] < VERSION_CACHE_SEC:
        return cached[0]
    version = WorkflowVersion.objects.select_related("workflow").get(pk=version_id)
    if len(_versions) >= 256:
        _versions.clear()
    _versions[key] = (version, time.monotonic())
    return version


def page_values(page: BookPage) -> dict[str, Value]:
    """The property values of one page, by name (see the module docstring)."""
    book: Book = page.book
    props = book.workflow_version.props
    values: dict[str, Value] = {p.name: p.default for p in props if not p.primary}
    values.update(book.values)
    fixed = book.style.overrides if book.style_id else {}
    values.update({k: v for k, v in page.overrides.items() if k in values and k not in fixed})
    if page.negative_prompt and "negative_prompt" in values and "negative_prompt" not in fixed:
        values["negative_prompt"] = page.negative_prompt
    primary = next(p for p in props if p.primary)
    values[primary.name] = page.prompt if primary.kind == "text" else None
    # A workflow that starts from the page's image may also take its words (img2img): a text
    # property on {{PROMPT}} gets the page's prompt, unless the style fixes it.
    worded = next((p for p in props if p.kind == "text" and p.placeholder == "PROMPT" and not p.primary), None)
    if primary.kind == "image" and worded and page.prompt and worded.name not in fixed:
        values[worded.name] = page.prompt
    return values


def page_seed(page: BookPage) -> int:
    """The seed of a new attempt: the page's (or book's) fixed seed, else a fresh random one."""
    props = page.book.workflow_version.props
    seed_prop = next((p for p in props if p.kind == "seed"), None)
    fixed = page_values(page).get(seed_prop.name) if seed_prop else None
    return int(fixed) if fixed is not None else random.randrange(RANDOM_SEED_MAX + 1)


def page_graph(page: BookPage, *, seed: int, filename_prefix: str) -> FilledWorkflow:
    """The graph to submit for one attempt of ``page``: every text and number placeholder filled
    (the attempt's seed, its own filename prefix), the asset placeholder ``{{INPUT_IMAGE}}`` left
    for the worker to fill with the uploaded image's name."""
    version = page.book.workflow_version
    props = version.props
    values = page_values(page)
    by_placeholder: dict[str, Any] = {FILENAME_PREFIX: filename_prefix}
    for prop in props:
        if prop.kind == "image":
            continue  # the worker's
        if prop.kind == "seed":
            by_placeholder[prop.placeholder] = seed
        else:
            by_placeholder[prop.placeholder] = values.get(prop.name) if values.get(prop.name) is not None else ""
    graph = substitute(version.graph, by_placeholder)
    return FilledWorkflow(
        graph=graph,
        output_node=version.output_node,
        output_ext=version.output_ext,
        output_mime=version.output_mime,
        version=str(version),
    )
