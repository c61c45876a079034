from __future__ import annotations

import json

from books.models import Book, BookPage
from comfysim.nodes import OBJECT_INFO_PATH
from fleets.hosts import InstanceReading, host_heartbeat, host_register
from fleets.metrics import fleet_metrics
from fleets.services import fleet_activate, fleet_workflow_assign
from tests.conftest import builtin_style
from tests.fleets.conftest import make_asset, make_bundle


def _samples() -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for family in fleet_metrics() for s in family.samples}


def test_a_fleet_reports_its_waiting_pages_and_hosts_behind_its_bundle(fleet, alice):
    fleet_workflow_assign(fleet=fleet, workflow_slug="model-free")
    first = make_bundle("b1", make_asset(b"1" * 64))
    info = json.loads(OBJECT_INFO_PATH.read_text())
    fleet_activate(fleet=fleet, bundle=first, by="root", object_info=info)
    for name in ("a", "b"):
        host, _ = host_register(fleet=fleet, name=name)
        host_heartbeat(
            host=host, state="ready", applied_bundle_id=first.pk, instances=[InstanceReading(f"http://{name}:8188")]
        )
    fleet_activate(fleet=fleet, bundle=make_bundle("b2", make_asset(b"2" * 64)), by="root", object_info=info)
    book = Book.objects.create(owner=alice, title="t", **builtin_style("model-free"))
    for n in (1, 2):
        BookPage.objects.create(book=book, number=n, prompt="p")
    Book.objects.create(owner=alice, title="other", **builtin_style("sdxl")).pages.create(number=1, prompt="p")

    samples = _samples()
    assert samples[("bookrender_fleet_jobs_queued", ("gpu-default",))] == 2  # not the sdxl page
    assert samples[("bookrender_fleet_jobs_running", ("gpu-default",))] == 0
    assert samples[("bookrender_fleet_oldest_queued_seconds", ("gpu-default",))] >= 0
    assert samples[("bookrender_fleet_hosts", ("gpu-default", "ready"))] == 2
    assert samples[("bookrender_fleet_hosts_behind", ("gpu-default",))] == 2
