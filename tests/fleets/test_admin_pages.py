"""The fleet admin pages in a real browser: what an operator sees of assets, bundles, fleets and
workers (screenshots land in test-artifacts/)."""

from __future__ import annotations

import json

from comfysim.nodes import OBJECT_INFO_PATH
from fleets.hosts import InstanceReading, host_heartbeat, host_register
from fleets.models import Asset
from fleets.services import fleet_activate, fleet_workflow_assign
from tests.books.test_browser import ARTIFACTS, browser, sign_in, tab  # noqa: F401 (fixtures)
from tests.fleets.conftest import make_asset, make_bundle


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
        tab.goto(live.url + path)
        text = tab.inner_text("body")
        tab.screenshot(path=str(ARTIFACTS / f"fleets-admin-{name}.png"), full_page=True)
        for words in expected:
            assert words in text, f"{name}: {words!r} missing"
