"""Routing by slots and instance health, at the service level (the fleet tests run it live)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from books.models import Book, BookPage
from renders import routing
from renders.models import ComfyInstance, InstanceSlot
from tests.conftest import builtin_style

pytestmark = pytest.mark.django_db
URLS = ["http://gpu0:8188", "http://gpu1:8189"]


@pytest.fixture
def pages(alice) -> list[BookPage]:
    book = Book.objects.create(owner=alice, title="t", **builtin_style())
    return [BookPage.objects.create(book=book, number=n, prompt="p") for n in range(1, 7)]


TOKENS: dict[int, uuid.UUID] = {}


def take(page: BookPage, attempt: int = 1, **kwargs: Any) -> Any:
    """A slot for a new claim of the page (its token kept in TOKENS)."""
    TOKENS[page.pk] = uuid.uuid4()
    return routing.slot_acquire(page=page, attempt=attempt, claim=TOKENS[page.pk], **kwargs)


@override_settings(COMFYUI_URLS=URLS)
def test_a_slot_answers_only_to_the_claim_that_holds_it(pages):
    first = uuid.uuid4()
    routing.slot_acquire(page=pages[0], attempt=1, claim=first)
    second = uuid.uuid4()  # the page was resumed: the new claim takes over the page's slot row
    routing.slot_acquire(page=pages[0], attempt=1, claim=second, resume_on=URLS[0])
    routing.slot_release(page_id=pages[0].pk, claim=first)  # the old holder cannot free it
    routing.slot_renew(page_id=pages[0].pk, claim=first)
    assert list(InstanceSlot.objects.values_list("claim", flat=True)) == [second]
    routing.slot_release(page_id=pages[0].pk, claim=second)
    assert not InstanceSlot.objects.exists()


@override_settings(COMFYUI_URLS=[URLS[0]])
def test_an_instance_that_leaves_comfyui_urls_is_retired_and_comes_back_with_it():
    ComfyInstance.objects.create(url=URLS[1], registration_source="settings")
    ComfyInstance.objects.create(url="http://added-by-hand:8188")
    routing.instances_sync()
    retired = ComfyInstance.objects.get(url=URLS[1])
    assert not retired.enabled and retired.last_error == routing.RETIRED
    assert ComfyInstance.objects.get(url="http://added-by-hand:8188").enabled  # the admin's own
    probed = set(ComfyInstance.objects.filter(enabled=True).values_list("url", flat=True))  # what the prober asks
    assert probed == {URLS[0], "http://added-by-hand:8188"}
    with override_settings(COMFYUI_URLS=URLS):
        routing.instances_sync()
    assert ComfyInstance.objects.get(url=URLS[1]).enabled


@override_settings(COMFYUI_URLS=URLS)
def test_an_instance_is_up_the_moment_anything_sees_it_answer():
    routing.instances_sync()
    ComfyInstance.objects.filter(url=URLS[0]).update(state="down", next_probe_at=timezone.now() + timedelta(seconds=30))
    routing.instance_succeeded(url=URLS[0])  # a worker's call answered, or its gate saw it
    assert ComfyInstance.objects.get(url=URLS[0]).state == "up"


@pytest.mark.django_db(transaction=True)
def test_slow_is_not_down_for_the_prober_the_gate_and_the_client(simulator, settings):
    """An instance answering within COMFY_HTTP_TIMEOUT_SEC is up for all three."""
    from renders.worker_gate import any_instance_healthy

    settings.COMFY_HTTP_TIMEOUT_SEC = 5
    simulator.set_faults(latency=3.5)
    instance = ComfyInstance.objects.create(url=simulator.url, state="down")
    assert routing.instance_answers(simulator.url)
    assert any_instance_healthy([simulator.url])
    assert ComfyInstance.objects.get(pk=instance.pk).state == "up"  # the gate marked it up
    ComfyInstance.objects.filter(pk=instance.pk).update(state="down")
    assert routing.instance_probe(instance) is True


@override_settings(COMFYUI_URLS=URLS)
def test_instances_come_from_comfyui_urls_with_their_gpu_index():
    routing.instances_sync()
    assert list(ComfyInstance.objects.order_by("url").values_list("url", "gpu_index", "slots")) == [
        ("http://gpu0:8188", 0, 2),
        ("http://gpu1:8189", 1, 2),
    ]


@override_settings(COMFYUI_URLS=URLS)
def test_attempts_go_to_the_least_loaded_instance_until_every_slot_is_taken(pages):
    chosen = [take(p) for p in pages[:5]]
    assert [i.url if i else None for i in chosen] == [URLS[0], URLS[1], URLS[0], URLS[1], None]


@override_settings(COMFYUI_URLS=URLS)
def test_among_equally_loaded_instances_the_preferred_one_is_taken(pages):
    assert take(pages[0], attempt=1, prefer=URLS[1]).url == URLS[1]
    # gpu1 now holds a lease: the less loaded gpu0 wins over the preference.
    assert take(pages[1], attempt=1, prefer=URLS[1]).url == URLS[0]
    assert take(pages[2], attempt=1, prefer=URLS[1]).url == URLS[1]


@override_settings(COMFYUI_URLS=URLS)
def test_a_released_or_expired_slot_is_free_again(pages):
    for page in pages[:4]:
        take(page)
    assert take(pages[4], attempt=1) is None
    routing.slot_release(page_id=pages[0].pk, claim=TOKENS[pages[0].pk])
    assert take(pages[4], attempt=1).url == URLS[0]
    InstanceSlot.objects.filter(page=pages[1]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert take(pages[5], attempt=1).url == URLS[1]  # a dead worker's lease


@override_settings(COMFYUI_URLS=URLS)
def test_down_and_disabled_instances_get_no_work(pages):
    routing.instances_sync()
    ComfyInstance.objects.filter(url=URLS[0]).update(state="down")
    ComfyInstance.objects.filter(url=URLS[1]).update(enabled=False)
    assert take(pages[0], attempt=1) is None


@override_settings(COMFYUI_URLS=URLS)
def test_a_retry_avoids_the_instance_that_failed_when_there_is_another(pages):
    assert take(pages[0], attempt=1, avoid=URLS[0]).url == URLS[1]


@override_settings(COMFYUI_URLS=URLS)
def test_a_resumed_attempt_goes_back_to_the_instance_with_its_prompt_even_when_full(pages):
    for page in pages[:4]:
        take(page)
    assert take(pages[4], attempt=3, resume_on=URLS[1]).url == URLS[1]


@override_settings(COMFYUI_URLS=URLS)
def test_three_failures_in_a_row_mark_an_instance_down_and_a_success_resets_the_count():
    routing.instances_sync()
    routing.instance_failed(url=URLS[0], error="refused")
    routing.instance_succeeded(url=URLS[0])
    routing.instance_failed(url=URLS[0], error="refused")
    routing.instance_failed(url=URLS[0], error="refused")
    assert ComfyInstance.objects.get(url=URLS[0]).state == "up"
    routing.instance_failed(url=URLS[0], error="refused")
    down = ComfyInstance.objects.get(url=URLS[0])
    assert down.state == "down" and down.last_error == "refused" and down.next_probe_at > timezone.now()


def test_a_probe_records_readings_and_a_failed_probe_backs_off(simulator):
    instance = ComfyInstance.objects.create(url=simulator.url, gpu_index=0)
    assert routing.instance_probe(instance) is True
    instance.refresh_from_db()
    assert instance.state == "up" and instance.queue_remaining == 0
    assert instance.vram_total_mb == 16311 and instance.reading_source == "system_stats"

    simulator.kill()
    backoffs = []
    for _ in range(3):
        assert routing.instance_probe(instance) is False
        instance.refresh_from_db()
        backoffs.append(instance.probe_backoff_sec)
    assert instance.state == "down" and backoffs == [1.0, 2.0, 4.0]

    simulator.restart()
    assert routing.instance_probe(instance) is True
    instance.refresh_from_db()
    assert instance.state == "up" and instance.down_since is None and instance.probe_backoff_sec == 0


def test_staff_see_and_edit_instances_in_the_admin(admin_user, client):
    ComfyInstance.objects.create(url="http://gpu0:8188", gpu_index=0)
    client.force_login(admin_user)
    response = client.get("/admin/renders/comfyinstance/")
    assert response.status_code == 200 and b"http://gpu0:8188" in response.content


@pytest.mark.django_db(transaction=True)
def test_a_pure_fleets_worker_serves_the_registered_instances(settings):
    """COMFYUI_URLS empty: the instances come from GPU hosts' registrations, and the worker's gate
    watches the enabled ones the database knows, read again each time."""
    from renders.worker_gate import worker_instances

    settings.COMFYUI_URLS, settings.BOOKRENDER_WORKER_INSTANCES = [], []
    assert worker_instances() == []
    ComfyInstance.objects.create(url="http://host-a:8188")
    ComfyInstance.objects.create(url="http://host-b:8188", enabled=False)
    assert worker_instances() == ["http://host-a:8188"]
    settings.BOOKRENDER_WORKER_INSTANCES = ["http://host-b:8188"]
    assert worker_instances() == ["http://host-b:8188"]  # what a host's own worker says wins
