"""Typed properties: their declarations and the values people give them."""

from __future__ import annotations

import json

import pytest

from workflows.graphs import UI_FORMAT_HINT, GraphError, graph_check, graph_parse, substitute
from workflows.properties import PropertyError, PropertyValuesError, properties_parse, values_check

PROPS = [
    {"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True, "max_length": 100},
    {"name": "steps", "kind": "integer", "placeholder": "STEPS", "default": 20, "min": 1, "max": 60},
    {"name": "cfg", "kind": "float", "placeholder": "CFG", "default": 7.0, "min": 1.0, "max": 15.5},
    {
        "name": "sampler",
        "kind": "choice",
        "placeholder": "SAMPLER",
        "default": "euler",
        "choices": ["euler", "dpmpp_2m"],
    },
    {"name": "tiled", "kind": "boolean", "placeholder": "TILED", "default": False},
    {"name": "seed", "kind": "seed", "placeholder": "SEED"},
    {"name": "caption", "kind": "text", "placeholder": "CAPTION", "default": "", "max_length": 10},
]


def test_each_kind_takes_its_type_and_refuses_values_out_of_its_limits_with_the_limits_in_words():
    props = properties_parse(PROPS)
    assert values_check(props, {"steps": "30", "cfg": "7.5", "sampler": "dpmpp_2m", "tiled": "on", "seed": 9}) == {
        "steps": 30,
        "cfg": 7.5,
        "sampler": "dpmpp_2m",
        "tiled": True,
        "seed": 9,
    }
    with pytest.raises(PropertyValuesError) as caught:
        values_check(props, {"steps": 61, "cfg": "0.5", "sampler": "ddim", "tiled": 3, "seed": -1, "caption": "x" * 11})
    assert caught.value.errors == {
        "steps": "Steps is 61: it must be a whole number from 1 to 60",
        "cfg": "Cfg is 0.5: it must be a number from 1 to 15.5",
        "sampler": "Sampler is 'ddim': it must be one of euler, dpmpp_2m",
        "tiled": "Tiled must be true or false",
        "seed": "Seed is -1: it must be a whole number from 0 to 18446744073709551615",
        "caption": "Caption is 11 characters long: it must be at most 10 characters",
    }


def test_values_cannot_set_the_primary_input_a_fixed_property_or_an_unknown_one():
    props = properties_parse(PROPS)
    with pytest.raises(PropertyValuesError) as caught:
        values_check(props, {"prompt": "x", "steps": 5, "stepz": 5}, fixed={"steps": 30})
    assert caught.value.errors["prompt"] == "Prompt is the page's own input, not a setting"
    assert caught.value.errors["steps"] == "Steps is fixed by the style"
    assert caught.value.errors["stepz"].startswith("there is no property 'stepz'; known: caption, cfg, prompt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p[0].pop("primary"), "exactly one property must be the primary input"),
        (lambda p: p[1].update(primary=True), "found prompt, steps"),
        (lambda p: p[1].update(default=99), "property 'steps': the default is not allowed: Steps is 99"),
        (lambda p: p[3].update(choices=[]), "a choice needs a list of choices"),
        (lambda p: p[2].update(kind="decimal"), "the kind must be one of text, integer, float"),
        (lambda p: p[1].update(placeholder="FILENAME_PREFIX"), "FILENAME_PREFIX is filled by the worker"),
        (lambda p: p[4].update(placeholder="STEPS"), "the placeholder 'STEPS' is used by more than one property"),
        (lambda p: p[0].update(kind="image"), "the image input's placeholder must be INPUT_IMAGE"),
        (lambda p: p[1].update(min=70), "property 'steps': min is more than max"),
    ],
)
def test_a_bad_declaration_is_refused_with_what_is_wrong(change, message):
    props = json.loads(json.dumps(PROPS))
    change(props)
    with pytest.raises(PropertyError, match=message):
        properties_parse(props)


def test_a_page_image_can_be_the_primary_input():
    props = properties_parse(
        [{"name": "image", "kind": "image", "placeholder": "INPUT_IMAGE", "primary": True}, *PROPS[1:]]
    )
    assert [p.name for p in props if p.primary] == ["image"]


def test_substitution_works_on_the_parsed_graph_and_leaves_the_asset_placeholder_for_the_worker():
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "{{INPUT_IMAGE}}"}},
        "2": {"class_type": "KSampler", "inputs": {"steps": "{{STEPS}}", "cfg": "{{ CFG }}", "seed": "{{SEED}}"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": 'say "{{PROMPT}}" \\ {{PROMPT}}'}},
    }
    filled = substitute(graph, {"STEPS": 30, "CFG": 7.5, "SEED": 2**40, "PROMPT": 'a "quoted" fox'})
    assert filled["1"]["inputs"]["image"] == "{{INPUT_IMAGE}}"
    assert filled["2"]["inputs"] == {"steps": 30, "cfg": 7.5, "seed": 2**40}
    # Quotes and backslashes in a prompt stay text: nothing is spliced into serialized JSON.
    assert filled["3"]["inputs"]["value"] == 'say "a "quoted" fox" \\ a "quoted" fox'
    assert graph["2"]["inputs"]["steps"] == "{{STEPS}}"


def test_the_editor_format_is_refused_with_how_to_export_the_api_format():
    with pytest.raises(GraphError) as caught:
        graph_parse(json.dumps({"last_node_id": 9, "nodes": [{"id": 1}], "links": [[1, 1, 0, 2, 0, "IMAGE"]]}))
    assert str(caught.value) == UI_FORMAT_HINT
    assert "Export (API)" in UI_FORMAT_HINT and "Dev mode" in UI_FORMAT_HINT


def test_every_placeholder_in_the_graph_is_declared_and_every_declared_one_is_used():
    props = properties_parse(PROPS[:2])
    graph = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "{{PROMPT}} {{STEPS}}"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
    }
    graph_check(graph=graph, output_node="9", properties=props)
    graph["1"]["inputs"]["value"] = "{{PROMPT}} {{STEPS}} {{STEEPS}}"
    with pytest.raises(GraphError, match=r"the graph uses \{\{STEEPS\}\}, which no property declares"):
        graph_check(graph=graph, output_node="9", properties=props)
    graph["1"]["inputs"]["value"] = "{{PROMPT}}"
    with pytest.raises(GraphError, match=r"declare \{\{STEPS\}\} \(steps\), but the graph does not use it"):
        graph_check(graph=graph, output_node="9", properties=props)
    graph["1"]["inputs"]["value"] = "{{PROMPT}} {{STEPS}}"
    graph["9"]["inputs"]["images"] = ["7", 0]
    with pytest.raises(GraphError, match=r"node 9 \(SaveImage\): input 'images' links to node '7'"):
        graph_check(graph=graph, output_node="9", properties=props)
