"""The workflow registry: versions checked against a live ComfyUI's /object_info (the simulator
here; tests/renders/test_real_comfyui.py runs the same checks on real ComfyUI), uploads in the
admin, styles, and what a page's graph is made of."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from PIL import Image

from books.models import Book
from books.services import BookInputError, PageSpec, book_create, page_edit
from renders.models import ComfyInstance
from workflows import services
from workflows.graphs import GraphError
from workflows.models import Style, Workflow, WorkflowVersion
from workflows.services import page_graph, version_check, version_create

PROPERTIES: list[dict[str, Any]] = [
    {"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True, "max_length": 4000},
    {"name": "seed", "kind": "seed", "placeholder": "SEED"},
    {"name": "size", "kind": "integer", "placeholder": "SIZE", "default": 64, "min": 16, "max": 512},
    {"name": "grain", "kind": "float", "placeholder": "GRAIN", "default": 0.3, "min": 0.0, "max": 1.0},
    {"name": "blur", "kind": "integer", "placeholder": "BLUR", "default": 2, "min": 1, "max": 31},
    {"name": "mood", "kind": "choice", "placeholder": "MOOD", "default": "calm", "choices": ["calm", "stormy"]},
]


def sketch_graph() -> dict[str, Any]:
    """A model-free graph every ComfyUI runs, with a placeholder for each property."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": "{{SIZE}}", "height": "{{SIZE}}", "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageAddNoise",
              "inputs": {"image": ["1", 0], "seed": "{{SEED}}", "strength": "{{GRAIN}}"}},
        "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": "{{BLUR}}", "sigma": 1.0}},
        "4": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "{{PROMPT}}, a {{MOOD}} day"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
    }  # fmt: skip


def check_against_object_info(url: str) -> None:
    """The checks an upload gets, against the ComfyUI at ``url``; each bad graph is refused with
    a message that names its node and input."""
    props, server = version_check(graph=sketch_graph(), output_node="6", properties=PROPERTIES, server=url)
    assert server == url and [p.name for p in props][:2] == ["prompt", "seed"]

    def refused(change: Any, output_node: str = "6") -> str:
        graph = sketch_graph()
        change(graph)
        with pytest.raises(GraphError) as caught:
            version_check(graph=graph, output_node=output_node, properties=PROPERTIES, server=url)
        return str(caught.value)

    message = refused(lambda g: g["3"].update(class_type="ImageBlurr"))
    assert (
        message
        == f"node 3: {url} has no node class 'ImageBlurr' (a custom node that is not installed there, or a typo)"
    )
    message = refused(lambda g: g["3"]["inputs"].pop("sigma"))
    assert message == "node 3 (ImageBlur): required input 'sigma' is missing"
    message = refused(lambda g: g["3"]["inputs"].update(filename_prefix="{{FILENAME_PREFIX}}"), output_node="3")
    assert message.startswith(f"the output node 3 (ImageBlur) is not an output node on {url}")
    message = refused(lambda g: g["6"]["inputs"].update(filename_prefix="page"))
    assert 'must take filename_prefix "{{FILENAME_PREFIX}}"' in message
    message = refused(lambda g: g["4"]["inputs"].update(value="{{PROMPT}}"))
    assert message == "the properties declare {{MOOD}} (mood), but the graph does not use it anywhere"


def test_a_workflow_is_checked_against_the_simulators_object_info(simulator):
    check_against_object_info(simulator.url)


def test_an_unreachable_comfyui_is_named_and_nothing_is_registered(db):
    with pytest.raises(GraphError, match=r"could not read /object_info from http://127.0.0.1:9 to check"):
        version_check(graph=sketch_graph(), output_node="6", properties=PROPERTIES, server="http://127.0.0.1:9")
    with pytest.raises(GraphError, match="no ComfyUI instance is registered to check the workflow against"):
        version_check(graph=sketch_graph(), output_node="6", properties=PROPERTIES, server=None)


# --- the admin ---------------------------------------------------------------------------------------


def upload(client: Any, data: Any, **fields: Any) -> Any:
    body = json.dumps(data).encode()
    return client.post(
        "/admin/workflows/workflowversion/add/",
        {
            "api_json": SimpleUploadedFile("sketch.json", body),
            "output_ext": "png",
            "output_mime": "image/png",
            **fields,
        },
    )


@pytest.fixture
def sketch(db: None) -> Workflow:
    return Workflow.objects.create(name="Sketch", slug="sketch", description="Grainy sketches")


def test_an_admin_uploads_the_api_json_and_it_becomes_version_1_checked_on_the_instance_that_is_up(
    root_client, simulator, sketch
):
    ComfyInstance.objects.create(url=simulator.url)
    response = upload(
        root_client, sketch_graph(), workflow=sketch.pk, output_node="6", properties=json.dumps(PROPERTIES)
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    version = sketch.versions.get()
    assert (version.number, version.output_node, version.checked_on) == (1, "6", simulator.url)
    assert version.graph == sketch_graph() and version.properties == PROPERTIES
    upload(root_client, sketch_graph(), workflow=sketch.pk, output_node="6", properties=json.dumps(PROPERTIES))
    assert list(sketch.versions.values_list("number", flat=True)) == [2, 1]


def test_the_admin_refuses_the_editor_format_and_a_graph_that_fails_validation_and_says_why(
    root_client, simulator, sketch
):
    ui = {"last_node_id": 6, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}
    form = (
        upload(root_client, ui, workflow=sketch.pk, output_node="6", properties=json.dumps(PROPERTIES))
        .context["adminform"]
        .form
    )
    assert "Export (API)" in form.errors["api_json"][0] and "Dev mode" in form.errors["api_json"][0]
    graph = sketch_graph()
    graph["3"]["inputs"].pop("sigma")
    form = (
        upload(
            root_client,
            graph,
            workflow=sketch.pk,
            output_node="6",
            properties=json.dumps(PROPERTIES),
            check_on=simulator.url,
        )
        .context["adminform"]
        .form
    )
    assert form.errors["api_json"] == [
        "The workflow does not validate: node 3 (ImageBlur): required input 'sigma' is missing."
    ]
    bad = [dict(p, primary=False) for p in PROPERTIES]
    form = (
        upload(
            root_client,
            sketch_graph(),
            workflow=sketch.pk,
            output_node="6",
            properties=json.dumps(bad),
            check_on=simulator.url,
        )
        .context["adminform"]
        .form
    )
    assert form.errors["properties"][0].startswith("Exactly one property must be the primary input")
    assert not WorkflowVersion.objects.filter(workflow=sketch).exists()


def test_a_style_fixes_values_that_are_checked_against_its_version(root_client, sketch):
    version = version_create(workflow=sketch, graph=sketch_graph(), output_node="6", properties=PROPERTIES)
    data = {"name": "Stormy", "slug": "stormy", "version": version.pk, "is_active": "on", "position": 5}
    form = (
        root_client.post("/admin/workflows/style/add/", {**data, "overrides": '{"mood": "sunny"}'})
        .context["adminform"]
        .form
    )
    assert form.errors["overrides"] == ["Mood is 'sunny': it must be one of calm, stormy."]
    response = root_client.post("/admin/workflows/style/add/", {**data, "overrides": '{"mood": "stormy", "blur": "5"}'})
    assert response.status_code == 302
    assert Style.objects.get(slug="stormy").overrides == {"mood": "stormy", "blur": 5}


# --- books and pages ------------------------------------------------------------------------------


@pytest.fixture
def stormy(sketch: Workflow) -> Style:
    version = version_create(workflow=sketch, graph=sketch_graph(), output_node="6", properties=PROPERTIES)
    return Style.objects.create(name="Stormy", slug="stormy", version=version, overrides={"mood": "stormy"})


def test_a_page_graph_has_the_styles_fixed_values_the_books_choices_and_the_pages_own(alice, stormy):
    book = book_create(
        owner=alice,
        title="Storm",
        style="stormy",
        values={"size": 128, "grain": "0.5"},
        pages=[PageSpec("a lighthouse"), PageSpec("a gull", overrides={"size": 256, "seed": 7})],
    )
    assert book.values == {"seed": None, "size": 128, "grain": 0.5, "blur": 2, "mood": "stormy"}
    first, second = book.pages.order_by("number")
    filled = page_graph(first, seed=42, filename_prefix="b/p1")
    assert filled.graph["1"]["inputs"] == {"width": 128, "height": 128, "batch_size": 1, "color": 0}
    assert filled.graph["2"]["inputs"]["seed"] == 42 and filled.graph["2"]["inputs"]["strength"] == 0.5
    assert filled.graph["4"]["inputs"]["value"] == "a lighthouse, a stormy day"
    assert filled.graph["6"]["inputs"]["filename_prefix"] == "b/p1"
    assert (filled.output_node, filled.output_ext, filled.output_mime, filled.version) == (
        "6",
        "png",
        "image/png",
        "sketch v1",
    )
    assert page_graph(second, seed=7, filename_prefix="b/p2").graph["1"]["inputs"]["width"] == 256


def test_a_new_version_or_a_changed_style_never_changes_a_book_that_exists(alice, stormy, sketch):
    book = book_create(owner=alice, title="Storm", style="stormy", pages=[PageSpec("a lighthouse")])
    graph = sketch_graph()
    graph["3"]["inputs"]["sigma"] = 9.0
    newer = version_create(workflow=sketch, graph=graph, output_node="6", properties=PROPERTIES)
    Style.objects.filter(pk=stormy.pk).update(version=newer, overrides={"mood": "calm"})
    book = Book.objects.get(pk=book.pk)
    filled = page_graph(book.pages.get(), seed=1, filename_prefix="p")
    assert filled.version == "sketch v1" and filled.graph["3"]["inputs"]["sigma"] == 1.0
    assert filled.graph["4"]["inputs"]["value"] == "a lighthouse, a stormy day"
    later = book_create(owner=alice, title="Calm", style="stormy", pages=[PageSpec("a lighthouse")])
    assert page_graph(later.pages.get(), seed=1, filename_prefix="p").version == "sketch v2"


def test_bad_choices_for_a_new_book_are_refused_by_name_and_nothing_is_created(alice, stormy, sketch):
    with pytest.raises(BookInputError) as caught:
        book_create(
            owner=alice,
            title="Storm",
            style="stormy",
            values={"size": 9999, "mood": "calm"},
            pages=[PageSpec("a gull", overrides={"blur": 0})],
        )
    assert caught.value.errors == {
        "value:size": "Size is 9999: it must be a whole number from 16 to 512",
        "value:mood": "Mood is fixed by the style",
        "page 1": "Blur is 0: it must be a whole number from 1 to 31",
    }
    with pytest.raises(BookInputError) as caught:
        book_create(owner=alice, title="Storm", style="windy", pages=[PageSpec("a gull")])
    assert caught.value.errors == {"style": "there is no style 'windy'"}
    Workflow.objects.filter(pk=sketch.pk).update(is_active=False)
    with pytest.raises(BookInputError) as caught:
        book_create(owner=alice, title="Storm", style="stormy", pages=[PageSpec("a gull")])
    assert caught.value.errors == {
        "style": "the style “Stormy” is not available for new books any more; choose another"
    }
    assert not Book.objects.filter(title="Storm").exists()


def test_a_book_whose_workflow_was_deactivated_still_renders_and_its_pages_can_be_edited(alice, stormy, sketch):
    book = book_create(owner=alice, title="Storm", style="stormy", pages=[PageSpec("a gull")])
    Workflow.objects.filter(pk=sketch.pk).update(is_active=False)
    page = book.pages.get()
    page.status = page.Status.DONE
    page.save()
    page_edit(page=page, by=alice, prompt="a gull at dusk", negative_prompt="", overrides={"blur": 9})
    page.refresh_from_db()
    assert page.overrides == {"blur": 9}
    assert page_graph(page, seed=1, filename_prefix="p").graph["3"]["inputs"]["blur_radius"] == 9


def test_the_page_edit_form_offers_the_books_settings_with_their_limits(alice_client, alice, stormy):
    book = book_create(owner=alice, title="Storm", style="stormy", values={"size": 128}, pages=[PageSpec("a gull")])
    book.pages.update(status="done")
    html = unescape(alice_client.get(f"/books/{book.pk}/pages/1/edit").content.decode())
    assert 'name="size"' in html and 'min="16"' in html and 'max="512"' in html and "Empty: the book's 128." in html
    assert 'name="mood"' not in html  # fixed by the style
    response = alice_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "a gull", "size": "600"})
    assert response.context["form"].errors == {"size": ["Size is 600: it must be a whole number from 16 to 512."]}


def test_import_workflows_registers_a_folder_once_and_a_changed_file_as_a_new_version(db, simulator, tmp_path):
    template = {"title": "Sketch", "output_node": "6", "properties": PROPERTIES, "prompt": sketch_graph()}
    (tmp_path / "sketch.json").write_text(json.dumps(template))
    out = io.StringIO()
    call_command("import_workflows", str(tmp_path), "--check-on", simulator.url, stdout=out)
    assert out.getvalue() == "sketch: registered sketch v1\n"
    call_command("import_workflows", str(tmp_path), "--check-on", simulator.url, stdout=out)
    assert out.getvalue().endswith("sketch: unchanged (sketch v1)\n")
    template["prompt"]["3"]["inputs"]["sigma"] = 2.0
    (tmp_path / "sketch.json").write_text(json.dumps(template))
    call_command("import_workflows", str(tmp_path), "--check-on", simulator.url, stdout=out)
    assert out.getvalue().endswith("sketch: registered sketch v2\n")
    assert Style.objects.get(slug="sketch").version.number == 1  # a style moves to a new version by hand
    template["prompt"]["3"]["class_type"] = "NoSuchBlur"
    (tmp_path / "broken.json").write_text(json.dumps(template))
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 template"):
        call_command("import_workflows", str(tmp_path), "--check-on", simulator.url, stdout=out, stderr=err)
    assert "skipped broken: node 3: " in err.getvalue() and "no node class 'NoSuchBlur'" in err.getvalue()
    assert not Workflow.objects.filter(slug="broken").exists()


def test_the_new_book_page_shows_a_styles_preview_served_through_the_storage(alice_client, stormy):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "navy").save(buffer, format="PNG")
    stormy.preview.save("stormy.png", ContentFile(buffer.getvalue()))
    html = alice_client.get("/books/new").content.decode()
    assert '<img class="style-preview" src="/styles/stormy/preview"' in html
    response = alice_client.get("/styles/stormy/preview")
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == buffer.getvalue()
    assert alice_client.get("/styles/sdxl/preview").status_code == 404  # no preview


def test_a_worker_reads_a_version_once_and_again_when_a_flushed_database_reuses_its_id(
    stormy, monkeypatch, django_assert_num_queries
):
    version = stormy.version
    monkeypatch.setattr(services, "_versions", {})
    with django_assert_num_queries(1):
        first = services.version_get_cached(version.pk, version.created_at)
    assert first.graph == version.graph and first.workflow.slug == "sketch"
    with django_assert_num_queries(0):
        assert services.version_get_cached(version.pk, version.created_at) is first
    # The same id with another creation time is another version (ids start again after a flush).
    with django_assert_num_queries(1):
        services.version_get_cached(version.pk, version.created_at + timedelta(seconds=1))
    # Its workflow's slug can be edited in the admin: an entry is read again once it is old.
    monkeypatch.setattr(services, "VERSION_CACHE_SEC", 0.0)
    Workflow.objects.filter(pk=version.workflow_id).update(slug="renamed")
    assert services.version_get_cached(version.pk, version.created_at).workflow.slug == "renamed"
