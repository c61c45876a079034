"""The fleet admin pages in a real browser: what an operator sees of assets, bundles, fleets and
workers (screenshots land in test-artifacts/)."""

from __future__ import annotations

import json

from comfysim.nodes import OBJECT_INFO_PATH
from fleets.hosts import InstanceReading, host_heartbeat, host_register
from fleets.models import Asset
from fleets.services import fleet_activate, fleet_workflow_assign
from tests.books.test_browser import ARTIFACTS, browser, sign_in, tab  # noqa: F401 (fixtures)
from tests.fleets.conftest import make_asset, make_bundle, register_workflow


def test_the_admin_shows_assets_bundles_fleets_and_their_workers(admin_user, live, fleet, tab):  # noqa: F811
    fleet_workflow_assign(fleet=fleet, workflow_slug="model-free")
    model = make_asset(b"w" * 2048, name="tiny.safetensors", source_url="https://example.org/tiny")
    node = make_asset(b"PK node", kind=Asset.Kind.CUSTOM_NODE, name="fancy-node.zip", node_classes="FancyNoise")
    bundle = make_bundle("gpu-default-2026-12", model, node)
    fleet_activate(fleet=fleet, bundle=bundle, by="root", object_info=json.loads(OBJECT_INFO_PATH.read_text()))
    host, _ = host_register(fleet=fleet, name="gpu-a")
    host_heartbeat(
        host=host, state="ready", applied_bundle_id=bundle.pk, instances=[InstanceReading("http://gpu-a:8188", 0)]
    )
    sign_in(tab, live.url, "/admin/login/", "root", "root-password")

    pages = {
        "assets": ("/admin/fleets/asset/", ["tiny.safetensors", "fancy-node.zip", model.sha256]),
        "bundle": (
            f"/admin/fleets/bundle/{bundle.pk}/change/",
            ["models/checkpoints/tiny.safetensors", "Extract a .zip into the folder"],
        ),
        "fleet": (f"/admin/fleets/fleet/{fleet.pk}/change/", ["gpu-default-2026-12", "Activated", "model-free"]),
        "hosts": ("/admin/fleets/host/", ["gpu-a", "Ready", "gpu-default-2026-12"]),
        "instances": ("/admin/renders/comfyinstance/", ["http://gpu-a:8188", "Registered by a fleet host"]),
    }
    for name, (path, expected) in pages.items():
        # The instances list has 12 columns: wide enough to see the fleet's ones in the screenshot.
        tab.set_viewport_size({"width": 1900 if name == "instances" else 1280, "height": 900})
        tab.goto(live.url + path)
        text = tab.inner_text("body")
        tab.screenshot(path=str(ARTIFACTS / f"fleets-admin-{name}.png"), full_page=True)
        for words in expected:
            assert words in text, f"{name}: {words!r} missing"


def test_a_fleet_is_activated_from_its_page_and_a_refusal_says_why(admin_user, live, fleet, tab):  # noqa: F811
    fleet_workflow_assign(fleet=fleet, workflow_slug="sdxl")
    bundle = make_bundle("sdxl-base", make_asset(b"x" * 64, name="sd_xl_base_1.0.safetensors"))
    lacking = make_bundle("lacking", make_asset(b"y" * 64, name="other.safetensors"))
    # The check needs a ComfyUI's /object_info; the admin asks an instance that is up.
    from comfysim.testing import running_simulator
    from renders.models import ComfyInstance

    with running_simulator() as sim:
        ComfyInstance.objects.create(url=sim.url, state=ComfyInstance.State.UP)
        sign_in(tab, live.url, "/admin/login/", "root", "root-password")
        tab.goto(f"{live.url}/admin/fleets/fleet/{fleet.pk}/change/")
        tab.select_option("#id_activate", label="lacking")
        tab.click("input[name=_continue]")
        assert "needs file 'sd_xl_base_1.0.safetensors'" in tab.inner_text(".messagelist")
        tab.select_option("#id_activate", label="sdxl-base")
        tab.click("input[name=_continue]")
        tab.screenshot(path=str(ARTIFACTS / "fleets-admin-activated.png"), full_page=True)
        assert "sdxl-base is now active on gpu-default" in tab.inner_text(".messagelist").lower()
        # A workflow whose custom node the active bundle lacks cannot be assigned to the fleet.
        register_workflow("fancy", "FancyNoise")
        tab.goto(f"{live.url}/admin/fleets/fleet/{fleet.pk}/change/")
        tab.select_option("select[name=workflows-1-workflow_slug]", value="fancy")
        tab.click("input[name=_continue]")
        assert "active bundle 'sdxl-base' of gpu-default cannot run it" in tab.inner_text("#workflows-group")
        assert "node class 'FancyNoise'" in tab.inner_text("#workflows-group")
    fleet.refresh_from_db()
    assert fleet.active_bundle == bundle and lacking.activations.count() == 0
    assert list(fleet.workflows.values_list("workflow_slug", flat=True)) == ["sdxl"]  # the blank row added nothing
