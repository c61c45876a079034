"""Routing by capability: a page goes only to a fleet host that runs its workflow with the
fleet's active bundle applied; a workflow no fleet runs says so."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import override_settings

from books.models import Book, BookPage
from comfysim.nodes import OBJECT_INFO_PATH
from fleets.hosts import InstanceReading, host_heartbeat, host_register
from fleets.models import Host
from fleets.services import fleet_activate, fleet_create, fleet_workflow_assign
from renders import routing
from renders.models import ComfyInstance
from tests.conftest import builtin_style
from tests.fleets.conftest import make_asset, make_bundle

A, B = "http://host-a:8188", "http://host-b:8188"
# A real ComfyUI 0.3.64's /object_info, as the simulator serves it.
CORE = json.loads(OBJECT_INFO_PATH.read_text())


@pytest.fixture
def two_hosts(fleet) -> tuple[Host, Host]:
    """Host a in gpu-default (runs model-free, bundle applied); host b in another fleet (runs nothing)."""
    bundle = make_bundle("b1", make_asset(b"m" * 64))
    fleet_workflow_assign(fleet=fleet, workflow_slug="model-free")
    fleet_activate(fleet=fleet, bundle=bundle, by="root", object_info=CORE)
    other = fleet_create(slug="gpu-other")
    hosts = []
    for fleet_of, name, url in ((fleet, "a", A), (other, "b", B)):
        host, _ = host_register(fleet=fleet_of, name=name)
        applied = bundle.pk if fleet_of == fleet else None
        host_heartbeat(host=host, state="ready", applied_bundle_id=applied, instances=[InstanceReading(url=url)])
        hosts.append(host)
    ComfyInstance.objects.update(state=ComfyInstance.State.UP)
    return hosts[0], hosts[1]


def _page(alice, workflow: str) -> BookPage:
    book = Book.objects.create(owner=alice, title="t", **builtin_style(workflow))
    return BookPage.objects.create(book=book, number=1, prompt="p")


@override_settings(COMFYUI_URLS=[A])
def test_pages_go_only_to_the_host_that_runs_their_workflow(two_hosts, alice):
    pages = [_page(alice, "model-free") for _ in range(3)]
    chosen = [routing.slot_acquire(page=p, attempt=1, claim=uuid.uuid4()) for p in pages]
    # Host a has 2 slots: the third page waits rather than going to host b.
    assert [c.url if c else None for c in chosen] == [A, A, None]


@override_settings(COMFYUI_URLS=[A])
def test_a_host_applying_or_behind_the_active_bundle_gets_no_new_work(two_hosts, alice, fleet):
    host_a, _ = two_hosts
    Host.objects.filter(pk=host_a.pk).update(state=Host.State.APPLYING)
    assert routing.slot_acquire(page=_page(alice, "model-free"), attempt=1, claim=uuid.uuid4()) is None
    Host.objects.filter(pk=host_a.pk).update(state=Host.State.READY)
    fleet_activate(fleet=fleet, bundle=make_bundle("b2", make_asset(b"n" * 64)), by="root", object_info=CORE)
    assert routing.slot_acquire(page=_page(alice, "model-free"), attempt=1, claim=uuid.uuid4()) is None


@override_settings(COMFYUI_URLS=[A])
def test_a_workflow_no_fleet_runs_is_not_runnable(two_hosts):
    assert routing.workflow_runnable(workflow="model-free")
    assert not routing.workflow_runnable(workflow="sdxl")


@override_settings(COMFYUI_URLS=[A])
def test_a_page_whose_workflow_no_fleet_runs_fails_its_attempt_instead_of_waiting(two_hosts, alice):
    from renders.render import page_render

    page = _page(alice, "sdxl")
    BookPage.objects.filter(pk=page.pk).update(attempt=1, status=BookPage.Status.QUEUED)
    # Not "deferred": no slot will ever free for it. A non-retryable error is tried once more.
    assert page_render(page_id=page.pk, attempt=1) == "retry"
    page.refresh_from_db()
    assert page.retry_count == 1 and page.image_error[-1]["kind"] == "validation"
    assert "no ComfyUI can run the workflow 'sdxl': no fleet has it assigned" in page.image_error[-1]["message"]
