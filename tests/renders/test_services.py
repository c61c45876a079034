"""The page state machine and the retry policy, at the service level."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.test import override_settings
from django.utils import timezone

from books.models import Book, BookPage
from renders import services
from renders.comfy import ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.models import RenderAttempt

Status = BookPage.Status


@pytest.fixture
def page(alice) -> BookPage:
    book = Book.objects.create(owner=alice, title="The Fox", workflow="model-free")
    page = BookPage.objects.create(book=book, number=1, prompt="a fox")
    services.page_enqueue(page_id=page.pk, by="test", reason="create")
    page.refresh_from_db()
    return page


def claim(page: BookPage) -> BookPage:
    claimed = services.page_claim(page_id=page.pk, attempt=page.attempt)
    assert claimed is not None
    return claimed


def fail(page: BookPage, kind: ErrorKind = ErrorKind.UNAVAILABLE, **kwargs) -> str:
    return services.page_fail(
        page_id=page.pk,
        attempt=page.attempt,
        error=ComfyError(kind, f"{kind} happened", instance="http://gpu0:8188", **kwargs),
        record=None,
    )


def test_enqueue_advances_the_attempt_and_queues_the_page(page):
    assert (page.status, page.attempt) == (Status.QUEUED, 1)
    assert page.next_attempt_at is not None
    assert page.job_metadata["run"]["reason"] == "create"


def test_enqueue_never_queues_a_page_twice(page):
    result = services.page_enqueue(page_id=page.pk, by="test", reason="regenerate")
    assert not result.queued and result.reason == "already pending"
    claim(page)
    result = services.page_enqueue(page_id=page.pk, by="test", reason="regenerate")
    assert not result.queued and result.reason == "already rendering"
    assert BookPage.objects.get(pk=page.pk).attempt == 1


def test_a_claim_is_a_conditional_update(page):
    assert services.page_claim(page_id=page.pk, attempt=page.attempt + 1) is None  # not current
    claimed = claim(page)
    assert claimed.status == Status.RENDERING and claimed.lease_expires_at > timezone.now()
    assert services.page_claim(page_id=page.pk, attempt=page.attempt) is None  # a duplicate message


def test_a_message_delivered_before_the_backoff_is_over_claims_nothing(page):
    BookPage.objects.filter(pk=page.pk).update(next_attempt_at=timezone.now() + timedelta(seconds=30))
    assert services.page_claim(page_id=page.pk, attempt=page.attempt) is None


def test_the_heartbeat_notices_a_superseded_attempt(page):
    claim(page)
    services.page_heartbeat(page_id=page.pk, attempt=page.attempt)
    BookPage.objects.filter(pk=page.pk).update(attempt=page.attempt + 1, status=Status.QUEUED)
    with pytest.raises(services.Superseded):
        services.page_heartbeat(page_id=page.pk, attempt=page.attempt)


@override_settings(COMFY_RETRY_BACKOFF_SEC=[15, 45, 90], COMFY_MAX_RETRIES=3)
def test_failures_retry_on_the_backoff_schedule_then_need_attention(page):
    # The real clock, not a frozen one: the fixture queued the page at the real time, and a claim
    # compares next_attempt_at with "now" (ours or the database's), so a frozen date would make the
    # page due never or always depending on today's date. The delay is bounded by the clock read
    # before and after the failure.
    expected = [15, 45, 90]
    for retry, base in enumerate(expected, start=1):
        page = claim(BookPage.objects.get(pk=page.pk))
        before = timezone.now()
        assert fail(page) == "retry"
        after = timezone.now()
        page.refresh_from_db()
        assert page.status == Status.QUEUED and page.attempt == retry + 1
        shortest = (page.next_attempt_at - after).total_seconds()
        longest = (page.next_attempt_at - before).total_seconds()
        assert base * 0.9 - 1 <= shortest and longest <= base * 1.1 + 1, (retry, shortest, longest)
        BookPage.objects.filter(pk=page.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    page = claim(BookPage.objects.get(pk=page.pk))
    assert fail(page) == "failed"
    page.refresh_from_db()
    assert page.status == Status.FAILED and page.needs_regeneration
    assert page.retry_count == 4 == len(page.image_error)
    assert [e["attempt"] for e in page.image_error] == [1, 2, 3, 4]
    entry = page.image_error[-1]
    assert set(entry) == {"attempt", "kind", "message", "node_id", "node_type", "exception_type", "instance", "at"}
    assert entry["kind"] == "unavailable" and entry["instance"] == "http://gpu0:8188"


@override_settings(COMFY_RETRY_BACKOFF_SEC=[15, 45])
def test_the_last_backoff_value_repeats():
    delays = [services.retry_delay(n) for n in range(1, 6)]
    assert 13.5 <= delays[0] <= 16.5
    assert all(40.5 <= d <= 49.5 for d in delays[1:])


def test_backoff_has_jitter():
    assert len({round(services.retry_delay(1), 6) for _ in range(20)}) > 1


def test_a_validation_failure_is_retried_once_then_flagged(page):
    page = claim(page)
    assert fail(page, ErrorKind.VALIDATION, node_id="1", node_type="EmptyImage") == "retry"
    BookPage.objects.filter(pk=page.pk).update(next_attempt_at=timezone.now())
    page = claim(BookPage.objects.get(pk=page.pk))
    assert fail(page, ErrorKind.VALIDATION, node_id="1", node_type="EmptyImage") == "failed"
    page.refresh_from_db()
    assert page.status == Status.FAILED and page.needs_regeneration and page.retry_count == 2
    assert page.latest_error["node_type"] == "EmptyImage"


def test_an_unreachable_instance_is_avoided_on_the_retry(page):
    fail(claim(page), ErrorKind.UNAVAILABLE)
    assert BookPage.objects.get(pk=page.pk).job_metadata["avoid_instance"] == "http://gpu0:8188"


@override_settings(COMFY_MAX_RETRIES=1)
def test_a_regenerate_gets_a_fresh_retry_budget_and_keeps_the_history(page):
    for _ in range(2):
        BookPage.objects.filter(pk=page.pk).update(next_attempt_at=timezone.now())
        page = claim(BookPage.objects.get(pk=page.pk))
        fail(page)
    page.refresh_from_db()
    assert page.status == Status.FAILED
    assert services.page_enqueue(page_id=page.pk, by="user:1", reason="regenerate").queued
    page = claim(BookPage.objects.get(pk=page.pk))
    assert fail(page) == "retry"
    page.refresh_from_db()
    assert page.retry_count == 3 == len(page.image_error)
    assert not page.needs_regeneration


def test_a_stale_attempt_never_overwrites_a_newer_image(page, png_bytes):
    page = claim(page)
    record = RenderAttempt.objects.create(
        page=page,
        number=page.attempt,
        prompt_id=services.prompt_id_for(page, page.attempt),
        instance_url="http://gpu0:8188",
        workflow="model-free",
        seed=1,
    )
    # A regenerate supersedes attempt 1 while it renders.
    BookPage.objects.filter(pk=page.pk).update(status=Status.QUEUED, attempt=2)
    finished = services.page_finish(record=record, image=png_bytes, result=a_result(), telemetry={})
    assert finished is False
    page.refresh_from_db()
    assert page.status == Status.QUEUED and not page.image
    assert RenderAttempt.objects.get(pk=record.pk).outcome == RenderAttempt.Outcome.SUPERSEDED
    assert not default_storage.exists(services.page_image_name(page, 1))


def test_a_new_books_pages_are_queued_in_one_update_and_published_after_commit(
    alice, django_assert_max_num_queries, django_capture_on_commit_callbacks, monkeypatch
):
    book = Book.objects.create(owner=alice, title="Big", workflow="model-free")
    BookPage.objects.bulk_create(BookPage(book=book, number=n, prompt=f"p{n}") for n in range(1, 201))
    ids = list(book.pages.order_by("number").values_list("pk", flat=True))
    published: list[tuple[int, int]] = []
    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda args, **kwargs: published.append(tuple(args)))
    with django_capture_on_commit_callbacks(execute=True):
        # SAVEPOINT/BEGIN, SELECT ... FOR UPDATE, one UPDATE, RELEASE/COMMIT: not one per page.
        with django_assert_max_num_queries(4):
            results = services.pages_enqueue(page_ids=ids, by="user:1", reason="create")
        assert published == []  # nothing before the commit
    assert [r.page.pk for r in results] == ids and all(r.queued for r in results)
    assert sorted(published) == [(page_id, 1) for page_id in sorted(ids)]
    assert set(book.pages.values_list("status", "attempt")) == {(Status.QUEUED, 1)}


def test_enqueue_answers_in_the_order_asked_and_skips_active_pages(page, alice):
    other = BookPage.objects.create(book=page.book, number=2, prompt="a heron", status=Status.FAILED)
    results = services.pages_enqueue(page_ids=[other.pk, page.pk], by="user:1", reason="regenerate")
    assert [(r.page.pk, r.queued, r.reason) for r in results] == [
        (other.pk, True, ""),
        (page.pk, False, "already pending"),
    ]
    other.refresh_from_db()
    assert other.job_metadata["requests"][-1]["by"] == "user:1"


def test_enqueue_of_an_unknown_page_queues_nothing(page):
    other = BookPage.objects.create(book=page.book, number=2, prompt="a heron", status=Status.FAILED)
    with pytest.raises(BookPage.DoesNotExist, match="nothing was queued"):
        services.pages_enqueue(page_ids=[other.pk, 999_999], by="user:1", reason="regenerate")
    other.refresh_from_db()
    assert (other.status, other.attempt) == (Status.FAILED, 0)


def test_prompt_ids_are_derived_from_page_and_attempt(page):
    assert services.prompt_id_for(page, 1) == services.prompt_id_for(page, 1)
    assert services.prompt_id_for(page, 1) != services.prompt_id_for(page, 2)


def a_result() -> WaitResult:
    entry = HistoryEntry("p", "success", [], None, 1, 2)
    return WaitResult(entry, 1, "success", time.time())


@pytest.fixture
def png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_page_whose_worker_lost_the_database_is_handed_back_at_once(page):
    claim(page)
    assert services.page_hand_back(page_id=page.pk, attempt=page.attempt) is True
    page.refresh_from_db()
    assert page.status == Status.QUEUED and page.attempt == 1 and page.retry_count == 0
    assert services.page_hand_back(page_id=page.pk, attempt=page.attempt) is False  # only a rendering page


@pytest.fixture
def one_slot_book(alice, simulator, settings, monkeypatch) -> list[BookPage]:
    """Two queued pages and one ComfyUI instance with a single slot; messages are not published."""
    from renders.models import ComfyInstance

    settings.COMFYUI_URLS = [simulator.url]
    ComfyInstance.objects.create(url=simulator.url, slots=1)
    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda *args, **kwargs: None)
    book = Book.objects.create(owner=alice, title="One slot", workflow="model-free")
    pages = [
        BookPage.objects.create(book=book, number=n, prompt=f"page {n}", overrides={"width": 32, "height": 32})
        for n in (1, 2)
    ]
    services.pages_enqueue(page_ids=[p.pk for p in pages], by="test", reason="create")
    return pages


@pytest.mark.django_db(transaction=True)
def test_a_page_with_no_free_slot_takes_the_first_one_that_frees(one_slot_book):
    import threading

    from django.db import connection

    from renders import routing

    first, second = one_slot_book
    assert routing.slot_acquire(page=first, attempt=1) is not None  # the only slot

    def release_soon() -> None:
        time.sleep(0.6)
        routing.slot_release(page_id=first.pk, attempt=1)
        connection.close()

    threading.Thread(target=release_soon).start()
    started = time.monotonic()
    assert services.page_render(page_id=second.pk, attempt=1) == "done"
    assert time.monotonic() - started > 0.5  # it waited for the slot (not deferred: see below)
    second.refresh_from_db()
    assert "deferred" not in second.job_metadata and second.retry_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_page_that_finds_no_slot_in_time_goes_back_to_the_queue_without_a_retry(one_slot_book, monkeypatch):
    from renders import routing

    monkeypatch.setattr(services, "NO_ROOM_WAIT_SEC", 0.5)
    first, second = one_slot_book
    assert routing.slot_acquire(page=first, attempt=1) is not None
    assert services.page_render(page_id=second.pk, attempt=1) == "deferred"
    second.refresh_from_db()
    assert (second.status, second.attempt, second.retry_count) == (Status.QUEUED, 1, 0)
    assert "free slot" in second.job_metadata["deferred"]["note"]
