from __future__ import annotations

import pytest

from fleets.models import Activation, Asset
from fleets.services import ActivationError, fleet_activate, fleet_rollback, fleet_workflow_assign
from tests.fleets.conftest import make_asset, make_bundle, register_workflow


def test_activation_is_refused_when_a_workflow_needs_a_model_the_bundle_lacks(fleet, object_info):
    fleet_workflow_assign(fleet=fleet, workflow_slug="sdxl")
    other = make_bundle("other-model", make_asset(b"m" * 64, name="other.safetensors"))
    with pytest.raises(ActivationError, match=r"'sdxl' needs file 'sd_xl_base_1.0.safetensors'"):
        fleet_activate(fleet=fleet, bundle=other, by="root", object_info=object_info)
    good = make_bundle("sdxl", make_asset(b"x" * 64, name="sd_xl_base_1.0.safetensors"))
    fleet_activate(fleet=fleet, bundle=good, by="root", object_info=object_info)
    assert fleet.active_bundle == good


def test_activation_is_refused_when_a_custom_nodes_class_is_missing(fleet, object_info, settings, tmp_path):
    # A workflow using a class that only a custom node provides (the node archive lists it).
    register_workflow("fancy", "FancyNoise")
    fleet_workflow_assign(fleet=fleet, workflow_slug="fancy")
    node = make_asset(b"PK archive", kind=Asset.Kind.CUSTOM_NODE, name="fancy.zip", node_classes="FancyNoise\n")
    without = make_bundle("without", make_asset(b"m" * 64))
    with pytest.raises(ActivationError, match="node class 'FancyNoise'"):
        fleet_activate(fleet=fleet, bundle=without, by="root", object_info=object_info)
    fleet_activate(fleet=fleet, bundle=make_bundle("with", node), by="root", object_info=object_info)


def test_a_workflow_is_assigned_only_when_the_active_bundle_has_what_it_needs(fleet, object_info):
    fleet_activate(fleet=fleet, bundle=make_bundle("plain", make_asset(b"m" * 64)), by="root", object_info=object_info)
    refusal = r"active bundle 'plain' of gpu-default cannot run it: .*'sdxl' needs file"
    with pytest.raises(ActivationError, match=refusal):
        fleet_workflow_assign(fleet=fleet, workflow_slug="sdxl", object_info=object_info)
    assert not fleet.workflows.exists()
    sdxl = make_bundle("sdxl", make_asset(b"x" * 64, name="sd_xl_base_1.0.safetensors"))
    fleet_activate(fleet=fleet, bundle=sdxl, by="root", object_info=object_info)
    fleet_workflow_assign(fleet=fleet, workflow_slug="sdxl", object_info=object_info)
    assert list(fleet.workflows.values_list("workflow_slug", flat=True)) == ["sdxl"]


def test_rollback_reactivates_the_previous_bundle_and_the_log_keeps_every_step(fleet):
    first = make_bundle("first", make_asset(b"1" * 64))
    second = make_bundle("second", make_asset(b"2" * 64, name="two.safetensors"))
    with pytest.raises(ActivationError, match="no previous bundle"):
        fleet_rollback(fleet=fleet, by="root")
    fleet_activate(fleet=fleet, bundle=first, by="root")
    fleet_activate(fleet=fleet, bundle=second, by="root")
    fleet_rollback(fleet=fleet, by="root")
    assert fleet.active_bundle == first
    log = list(Activation.objects.filter(fleet=fleet).order_by("pk").values_list("kind", "bundle__name"))
    assert log == [("activate", "first"), ("activate", "second"), ("rollback", "first")]


def test_a_draft_bundle_cannot_be_activated(fleet):
    draft = make_bundle("draft", make_asset(b"d" * 64), publish=False)
    with pytest.raises(ActivationError, match="not published"):
        fleet_activate(fleet=fleet, bundle=draft, by="root")
