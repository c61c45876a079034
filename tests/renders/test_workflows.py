from __future__ import annotations

import json

import pytest

from renders.workflows import BUILTIN_DIR, WorkflowError, template_load, workflow_load_dir, workflow_parse

GOOD = {
    "output_node": "2",
    "prompt": {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": "{{WIDTH}}", "height": "{{HEIGHT}}", "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": "page: {{PROMPT}} (seed {{SEED}})"}},
    },
}
# The same page, its prompt placeholder misspelt.
TYPO = json.loads(json.dumps(GOOD).replace("{{PROMPT}}", "{{PROMPT}} {{PROMT}}"))


def parse(data: object, slug: str = "test") -> object:
    return workflow_parse(json.dumps(data), slug=slug)


def test_both_shipped_workflows_load():
    found, errors = workflow_load_dir(BUILTIN_DIR)
    assert errors == []
    by_slug = {w.slug: w for w in found}
    assert {"model-free", "sdxl"} <= set(by_slug)
    assert by_slug["sdxl"].output_node == "9"


def test_it_refuses_a_template_that_is_not_json():
    with pytest.raises(WorkflowError, match=r"'broken'.*not valid JSON"):
        workflow_parse('{"prompt": ', slug="broken")


def test_it_refuses_a_template_without_its_output_node():
    with pytest.raises(WorkflowError, match="'output_node' is missing"):
        parse({**GOOD, "output_node": None})
    with pytest.raises(WorkflowError, match=r"output node .7. is not in the graph"):
        parse({**GOOD, "output_node": "7"})


def test_it_refuses_an_unknown_placeholder_and_names_it():
    data = TYPO
    with pytest.raises(WorkflowError, match=r"the graph uses \{\{PROMT\}\}, which no property declares"):
        parse(data)


def test_it_refuses_an_output_node_without_a_per_attempt_prefix():
    data = json.loads(json.dumps(GOOD))
    data["prompt"]["2"]["inputs"]["filename_prefix"] = "book/page"
    with pytest.raises(WorkflowError, match="FILENAME_PREFIX"):
        parse(data)


def test_it_refuses_a_node_without_class_type():
    data = json.loads(json.dumps(GOOD))
    del data["prompt"]["1"]["class_type"]
    with pytest.raises(WorkflowError, match="node '1' has no class_type"):
        parse(data)


def test_filling_replaces_whole_placeholders_with_typed_values_and_embedded_ones_as_text():
    workflow = workflow_parse(json.dumps(GOOD), slug="test")
    graph = workflow.fill(prompt="a fox", negative_prompt="", seed=42, filename_prefix="b/p-1", width=640, height=480)
    assert graph["1"]["inputs"]["width"] == 640 and graph["1"]["inputs"]["height"] == 480
    assert graph["2"]["inputs"]["filename_prefix"] == "b/p-1"
    assert graph["3"]["inputs"]["value"] == "page: a fox (seed 42)"
    # The template itself is untouched, so the next attempt starts from the placeholders again.
    assert workflow.graph["1"]["inputs"]["width"] == "{{WIDTH}}"


def test_filling_uses_the_workflows_default_size():
    graph = template_load("model-free").fill(prompt="x", negative_prompt="", seed=1, filename_prefix="p")
    assert (graph["1"]["inputs"]["width"], graph["1"]["inputs"]["height"]) == (768, 1024)
    assert graph["2"]["inputs"]["seed"] == 1
