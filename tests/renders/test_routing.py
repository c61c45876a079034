"""Routing by slots and instance health, at the service level (the fleet tests run it live)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from books.models import Book, BookPage
from renders import routing
from renders.models import ComfyInstance, InstanceSlot

pytestmark = pytest.mark.django_db
URLS = ["http://gpu0:8188", "http://gpu1:8189"]


@pytest.fixture
def pages(alice) -> list[BookPage]:
    book = Book.objects.create(owner=alice, title="t", workflow="model-free")
    return [BookPage.objects.create(book=book, number=n, prompt="p") for n in range(1, 7)]


@override_settings(COMFYUI_URLS=URLS)
def test_instances_come_from_comfyui_urls_with_their_gpu_index():
    routing.instances_sync()
    assert list(ComfyInstance.objects.order_by("url").values_list("url", "gpu_index", "slots")) == [
        ("http://gpu0:8188", 0, 2),
        ("http://gpu1:8189", 1, 2),
    ]


@override_settings(COMFYUI_URLS=URLS)
def test_attempts_go_to_the_least_loaded_instance_until_every_slot_is_taken(pages):
    chosen = [routing.slot_acquire(page=p, attempt=1) for p in pages[:5]]
    assert [i.url if i else None for i in chosen] == [URLS[0], URLS[1], URLS[0], URLS[1], None]


@override_settings(COMFYUI_URLS=URLS)
def test_among_equally_loaded_instances_the_preferred_one_is_taken(pages):
    assert routing.slot_acquire(page=pages[0], attempt=1, prefer=URLS[1]).url == URLS[1]
    # gpu1 now holds a lease: the less loaded gpu0 wins over the preference.
    assert routing.slot_acquire(page=pages[1], attempt=1, prefer=URLS[1]).url == URLS[0]
    assert routing.slot_acquire(page=pages[2], attempt=1, prefer=URLS[1]).url == URLS[1]


@override_settings(COMFYUI_URLS=URLS)
def test_a_released_or_expired_slot_is_free_again(pages):
    for page in pages[:4]:
        routing.slot_acquire(page=page, attempt=1)
    assert routing.slot_acquire(page=pages[4], attempt=1) is None
    routing.slot_release(page_id=pages[0].pk, attempt=1)
    assert routing.slot_acquire(page=pages[4], attempt=1).url == URLS[0]
    InstanceSlot.objects.filter(page=pages[1]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert routing.slot_acquire(page=pages[5], attempt=1).url == URLS[1]  # a dead worker's lease


@override_settings(COMFYUI_URLS=URLS)
def test_down_and_disabled_instances_get_no_work(pages):
    routing.instances_sync()
    ComfyInstance.objects.filter(url=URLS[0]).update(state="down")
    ComfyInstance.objects.filter(url=URLS[1]).update(enabled=False)
    assert routing.slot_acquire(page=pages[0], attempt=1) is None


@override_settings(COMFYUI_URLS=URLS)
def test_a_retry_avoids_the_instance_that_failed_when_there_is_another(pages):
    assert routing.slot_acquire(page=pages[0], attempt=1, avoid=URLS[0]).url == URLS[1]


@override_settings(COMFYUI_URLS=URLS)
def test_a_resumed_attempt_goes_back_to_the_instance_with_its_prompt_even_when_full(pages):
    for page in pages[:4]:
        routing.slot_acquire(page=page, attempt=1)
    assert routing.slot_acquire(page=pages[4], attempt=3, resume_on=URLS[1]).url == URLS[1]


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
