"""The page state machine and the retry policy, at the service level."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.db.models.functions import Now
from django.test import override_settings

from books.models import Book, BookPage
from renders import render, services
from renders.comfy import ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.lease import db_now
from renders.models import RenderAttempt
from tests.conftest import builtin_style, wait_for

Status = BookPage.Status


@pytest.fixture
def page(alice) -> BookPage:
    book = Book.objects.create(owner=alice, title="The Fox", **builtin_style())
    page = BookPage.objects.create(book=book, number=1, prompt="a fox")
    services.page_enqueue(page_id=page.pk, by="test", reason="create")
    page.refresh_from_db()
    return page


def claim(page: BookPage) -> services.Claim:
    claimed = services.page_claim(page_id=page.pk, attempt=page.attempt)
    assert claimed is not None
    return claimed


def fail(held: services.Claim, kind: ErrorKind = ErrorKind.UNAVAILABLE, **kwargs) -> str:
    return services.page_fail(
        claim=held,
        error=ComfyError(kind, f"{kind} happened", instance="http://gpu0:8188", **kwargs),
        record=None,
    )


def db_due_now(page: BookPage) -> None:
    """The backoff is over (on the database's clock)."""
    BookPage.objects.filter(pk=page.pk).update(next_attempt_at=Now())


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


def test_a_claim_is_a_conditional_update_with_a_fencing_token(page):
    assert services.page_claim(page_id=page.pk, attempt=page.attempt + 1) is None  # not current
    held = claim(page)
    row = BookPage.objects.get(pk=page.pk)
    assert row.status == Status.RENDERING and row.lease_expires_at > db_now() and row.claim == held.token
    assert services.page_claim(page_id=page.pk, attempt=page.attempt) is None  # a duplicate message


def test_a_message_delivered_before_the_backoff_is_over_claims_nothing_and_is_published_again(page, monkeypatch):
    published: list[tuple[tuple[int, int], float]] = []
    monkeypatch.setattr(
        "renders.tasks.render_page.apply_async",
        lambda args, countdown=0, **kw: published.append((tuple(args), countdown)),
    )
    BookPage.objects.filter(pk=page.pk).update(next_attempt_at=db_now() + timedelta(seconds=30))
    assert services.page_claim(page_id=page.pk, attempt=page.attempt) is None
    [(message, countdown)] = published
    assert message == (page.pk, page.attempt) and 20 < countdown <= 30


def test_the_heartbeat_notices_a_superseded_attempt(page):
    held = claim(page)
    services.page_heartbeat(held)
    BookPage.objects.filter(pk=page.pk).update(attempt=page.attempt + 1, status=Status.QUEUED, claim=None)
    with pytest.raises(services.Superseded):
        services.page_heartbeat(held)


def test_a_worker_whose_page_was_resumed_loses_its_claim_and_changes_nothing(page, png_bytes):
    """Slow but alive: its lease lapsed, the sweeper handed the page on (same attempt), and a
    second worker claimed it. Every step of the first worker now fails, and tells it why."""
    first = claim(page)
    BookPage.objects.filter(pk=page.pk).update(lease_expires_at=db_now() - timedelta(seconds=1))
    assert services.page_resume(page_id=page.pk, attempt=page.attempt, token=first.token)
    second = claim(page)
    assert second.token != first.token and second.attempt == first.attempt
    with pytest.raises(services.ClaimLost):
        services.page_heartbeat(first)
    assert fail(first) == "lost"
    assert services.page_defer(claim=first, seconds=5, note="x") is False
    assert services.page_hand_back(claim=first) is False
    record = attempt_record(page)
    assert services.page_finish(claim=first, record=record, image=png_bytes, result=a_result(), telemetry={}) is False
    row = BookPage.objects.get(pk=page.pk)
    assert (row.status, row.claim, row.retry_count) == (Status.RENDERING, second.token, 0)
    assert RenderAttempt.objects.get(pk=record.pk).outcome == RenderAttempt.Outcome.RUNNING  # the second's now
    # The second worker finishes; its file is the page's, and the first's file is gone.
    assert services.page_finish(claim=second, record=record, image=png_bytes, result=a_result(), telemetry={})
    row.refresh_from_db()
    assert row.status == Status.DONE and default_storage.exists(str(row.image.name))
    assert row.image.name.endswith(f"{second.token.hex[:12]}.png")
    assert not default_storage.exists(services.page_image_name(page, page.attempt, first.token))
    assert RenderAttempt.objects.get(pk=record.pk).outcome == RenderAttempt.Outcome.SUCCESS


def test_attempt_outcomes_change_only_from_running(page, png_bytes):
    held = claim(page)
    record = attempt_record(page)
    assert services.page_finish(claim=held, record=record, image=png_bytes, result=a_result(), telemetry={})
    # A late, stale failure of the same attempt cannot turn its success into a failure.
    services.page_fail(claim=held, error=ComfyError(ErrorKind.EXECUTION, "late"), record=record)
    assert RenderAttempt.objects.get(pk=record.pk).outcome == RenderAttempt.Outcome.SUCCESS


@override_settings(COMFY_RETRY_BACKOFF_SEC=[15, 45, 90], COMFY_MAX_RETRIES=3)
def test_failures_retry_on_the_backoff_schedule_then_need_attention(page):
    """The backoff is measured on the database's clock, which decides when the page is due."""
    expected = [15, 45, 90]
    for retry, base in enumerate(expected, start=1):
        held = claim(BookPage.objects.get(pk=page.pk))
        before = db_now()
        assert fail(held) == "retry"
        after = db_now()
        page.refresh_from_db()
        assert page.status == Status.QUEUED and page.attempt == retry + 1
        assert before + timedelta(seconds=base * 0.9) <= page.next_attempt_at, retry
        assert page.next_attempt_at <= after + timedelta(seconds=base * 1.1), retry
        db_due_now(page)
    held = claim(BookPage.objects.get(pk=page.pk))
    assert fail(held) == "failed"
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
    held = claim(page)
    assert fail(held, ErrorKind.VALIDATION, node_id="1", node_type="EmptyImage") == "retry"
    db_due_now(page)
    held = claim(BookPage.objects.get(pk=page.pk))
    assert fail(held, ErrorKind.VALIDATION, node_id="1", node_type="EmptyImage") == "failed"
    page.refresh_from_db()
    assert page.status == Status.FAILED and page.needs_regeneration and page.retry_count == 2
    assert page.latest_error["node_type"] == "EmptyImage"


def test_an_unreachable_instance_is_avoided_on_the_retry(page):
    fail(claim(page), ErrorKind.UNAVAILABLE)
    assert BookPage.objects.get(pk=page.pk).job_metadata["avoid_instance"] == "http://gpu0:8188"


@override_settings(COMFY_MAX_RETRIES=1)
def test_a_regenerate_gets_a_fresh_retry_budget_and_keeps_the_history(page):
    for _ in range(2):
        db_due_now(page)
        fail(claim(BookPage.objects.get(pk=page.pk)))
    page.refresh_from_db()
    assert page.status == Status.FAILED
    assert services.page_enqueue(page_id=page.pk, by="user:1", reason="regenerate").queued
    assert fail(claim(BookPage.objects.get(pk=page.pk))) == "retry"
    page.refresh_from_db()
    assert page.retry_count == 3 == len(page.image_error)
    assert not page.needs_regeneration


def test_a_stale_attempt_never_overwrites_a_newer_image(page, png_bytes):
    held = claim(page)
    record = attempt_record(page)
    # A regenerate supersedes attempt 1 while it renders.
    services.page_enqueue(page_id=page.pk, by="admin:1", reason="admin_rerun", force=True)
    finished = services.page_finish(claim=held, record=record, image=png_bytes, result=a_result(), telemetry={})
    assert finished is False
    page.refresh_from_db()
    assert page.status == Status.QUEUED and not page.image
    assert RenderAttempt.objects.get(pk=record.pk).outcome == RenderAttempt.Outcome.SUPERSEDED
    assert not default_storage.exists(services.page_image_name(page, 1, held.token))


def test_every_success_is_kept_as_a_version_and_a_failed_regenerate_keeps_the_chosen_image(page, png_bytes):
    first = claim(page)
    assert services.page_finish(
        claim=first, record=attempt_record(page), image=png_bytes, result=a_result(), telemetry={}
    )
    page.refresh_from_db()
    chosen = str(page.image.name)
    services.page_enqueue(page_id=page.pk, by="user:1", reason="regenerate")
    page.refresh_from_db()
    second = claim(page)
    assert services.page_finish(
        claim=second, record=attempt_record(page), image=png_bytes, result=a_result(), telemetry={}
    )
    page.refresh_from_db()
    assert [v.attempt for v in page.versions.all()] == [2, 1] and page.image_attempt == 2
    assert default_storage.exists(chosen)  # the earlier image is still there
    services.page_version_choose(page=page, version=page.versions.get(attempt=1))
    services.page_enqueue(page_id=page.pk, by="user:1", reason="regenerate")
    page.refresh_from_db()
    with override_settings(COMFY_MAX_RETRIES=0):
        assert fail(claim(page), ErrorKind.EXECUTION) == "failed"
    page.refresh_from_db()
    assert page.status == Status.FAILED and page.image.name == chosen and default_storage.exists(chosen)


@override_settings(BOOKRENDER_PAGE_VERSIONS_KEPT=2)
def test_old_versions_are_pruned_but_never_the_chosen_one(page, png_bytes):
    for _ in range(4):
        page.refresh_from_db()
        held = claim(page)
        services.page_finish(claim=held, record=attempt_record(page), image=png_bytes, result=a_result(), telemetry={})
        if held.attempt == 1:
            oldest = str(BookPage.objects.get(pk=page.pk).image.name)
            services.page_version_choose(page=page, version=page.versions.get(attempt=1))
        services.versions_prune(page_id=page.pk)
        services.page_enqueue(page_id=page.pk, by="user:1", reason="regenerate")
    page.refresh_from_db()
    # Attempt 4 became the chosen image when it finished; 3 is the other one kept; 1 and 2 went.
    assert sorted(v.attempt for v in page.versions.all()) == [3, 4]
    assert not default_storage.exists(oldest)
    assert page.image_attempt == 4


def test_a_new_books_pages_are_queued_in_one_update_and_published_after_commit(
    alice, django_assert_max_num_queries, django_capture_on_commit_callbacks, monkeypatch
):
    book = Book.objects.create(owner=alice, title="Big", **builtin_style())
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
    # Fair scheduling: the owner's window goes out; the other pages wait for their turn.
    assert sorted(published) == [(page_id, 1) for page_id in sorted(ids)[: services.owner_window()]]
    assert set(book.pages.values_list("status", "attempt")) == {(Status.QUEUED, 1)}


def test_an_owners_window_is_topped_up_a_quarter_at_a_time(alice, settings, monkeypatch):
    settings.BOOKRENDER_OWNER_WINDOW = 8
    book = Book.objects.create(owner=alice, title="Big", **builtin_style())
    BookPage.objects.bulk_create(BookPage(book=book, number=n, prompt=f"p{n}") for n in range(1, 21))
    monkeypatch.setattr("renders.services.transaction.on_commit", lambda *args, **kwargs: None)
    services.pages_enqueue(page_ids=list(book.pages.values_list("pk", flat=True)), by="user:1", reason="create")
    assert services.pages_publish_fair(owner_ids=[alice.pk]) == 8

    def settle(count: int) -> None:
        in_flight = book.pages.filter(status=Status.QUEUED, published_at__isnull=False).order_by("number")
        BookPage.objects.filter(pk__in=list(in_flight.values_list("pk", flat=True)[:count])).update(status=Status.DONE)

    settle(1)
    assert services.pages_publish_fair(owner_ids=[alice.pk]) == 0  # one free place of 8: not yet
    settle(1)
    assert services.pages_publish_fair(owner_ids=[alice.pk]) == 2  # a quarter free: filled again
    assert book.pages.filter(status=Status.QUEUED, published_at__isnull=False).count() == 8


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


def attempt_record(page: BookPage) -> RenderAttempt:
    page.refresh_from_db()
    record, _ = RenderAttempt.objects.get_or_create(
        page=page,
        number=page.attempt,
        defaults={
            "prompt_id": services.prompt_id_for(page, page.attempt),
            "instance_url": "http://gpu0:8188",
            "workflow": "model-free",
            "seed": 1,
        },
    )
    return record


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
    held = claim(page)
    assert services.page_hand_back(claim=held) is True
    page.refresh_from_db()
    assert page.status == Status.QUEUED and page.attempt == 1 and page.retry_count == 0
    assert services.page_hand_back(claim=held) is False  # only a rendering page it holds


@pytest.fixture
def one_slot_book(alice, simulator, settings, monkeypatch) -> list[BookPage]:
    """Two queued pages and one ComfyUI instance with a single slot; messages are not published."""
    from renders.models import ComfyInstance

    settings.COMFYUI_URLS = [simulator.url]
    ComfyInstance.objects.create(url=simulator.url, slots=1)
    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda *args, **kwargs: None)
    book = Book.objects.create(owner=alice, title="One slot", **builtin_style())
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
    token = uuid.uuid4()
    assert routing.slot_acquire(page=first, attempt=1, claim=token) is not None  # the only slot
    released = threading.Event()

    def release_soon() -> None:
        time.sleep(0.6)
        routing.slot_release(page_id=first.pk, claim=token)
        released.set()
        connection.close()

    threading.Thread(target=release_soon).start()
    assert render.page_render(page_id=second.pk, attempt=1) == "done"
    assert released.is_set()  # it rendered in the slot that freed, not before
    second.refresh_from_db()
    assert "deferred" not in second.job_metadata and second.retry_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_page_that_finds_no_slot_in_time_goes_back_to_the_queue_without_a_retry(one_slot_book, monkeypatch):
    from renders import routing

    monkeypatch.setattr(render, "NO_ROOM_WAIT_SEC", 0.5)
    first, second = one_slot_book
    assert routing.slot_acquire(page=first, attempt=1, claim=uuid.uuid4()) is not None
    assert render.page_render(page_id=second.pk, attempt=1) == "deferred"
    second.refresh_from_db()
    assert (second.status, second.attempt, second.retry_count) == (Status.QUEUED, 1, 0)
    assert "free slot" in second.job_metadata["deferred"]["note"]


@pytest.mark.django_db(transaction=True)
def test_no_free_is_sent_while_another_page_renders_on_the_instance(one_slot_book, simulator):
    from renders import routing
    from renders.models import ComfyInstance

    ComfyInstance.objects.filter(url=simulator.url).update(slots=2)
    simulator.set_faults(vram_free_mb=500)
    first, second = one_slot_book
    assert routing.slot_acquire(page=first, attempt=1, claim=uuid.uuid4()) is not None  # it renders there
    assert render.page_render(page_id=second.pk, attempt=1) == "deferred"
    assert simulator.stats()["free_calls"] == 0  # a /free would unload the models under the other page
    second.refresh_from_db()
    assert (
        second.status == Status.QUEUED and second.retry_count == 0 and "VRAM" in second.job_metadata["deferred"]["note"]
    )


@pytest.mark.django_db(transaction=True)
@override_settings(COMFY_VRAM_WAIT_MAX_SEC=1)
def test_a_page_that_waits_too_long_for_vram_needs_attention_with_a_clear_kind(alice, tmp_path, settings, monkeypatch):
    from comfysim.testing import running_simulator
    from renders.models import ComfyInstance

    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda *args, **kwargs: None)
    # A GPU whose memory another program holds: /free does not give it back.
    with running_simulator(output_dir=tmp_path / "out", args=["--vram-free-mb", "500"]) as sim:
        settings.COMFYUI_URLS = [sim.url]
        ComfyInstance.objects.create(url=sim.url)
        book = Book.objects.create(owner=alice, title="Short of memory", **builtin_style())
        page = BookPage.objects.create(book=book, number=1, prompt="p", overrides={"width": 32, "height": 32})
        services.page_enqueue(page_id=page.pk, by="test", reason="create")
        assert render.page_render(page_id=page.pk, attempt=1) == "deferred"
        page.refresh_from_db()
        assert page.job_metadata["vram_wait"]["attempt"] == 1
        BookPage.objects.filter(pk=page.pk).update(next_attempt_at=Now())
        time.sleep(1.1)  # the bound (1 s) has passed since the first deferral, by the database's clock
        assert render.page_render(page_id=page.pk, attempt=1) == "failed"
        assert sim.stats()["submitted"] == 0
    page.refresh_from_db()
    assert page.status == Status.FAILED and page.latest_error["kind"] == "low_vram"
    assert "1000 MB" in page.latest_error["message"]


@pytest.mark.django_db(transaction=True)
def test_a_soft_time_limit_cancels_the_prompt_on_comfyui(one_slot_book, simulator, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from renders.comfy import PromptWatcher

    simulator.set_faults(render_time="30")

    def out_of_time(self: PromptWatcher, prompt_id: str, **kwargs: object) -> None:
        wait_for(lambda: prompt_id in self.client.queue().running, timeout=10)
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(PromptWatcher, "wait", out_of_time)
    first, _ = one_slot_book
    assert render.page_render(page_id=first.pk, attempt=1) == "retry"
    assert simulator.stats()["interrupted"] == 1
    first.refresh_from_db()
    assert first.latest_error["kind"] == "timeout" and "soft time limit" in first.latest_error["message"]


def test_cancel_stops_queued_and_rendering_pages_and_their_workers_find_out(page, alice):
    held = claim(page)
    queued = BookPage.objects.create(book=page.book, number=2, prompt="a heron")
    services.page_enqueue(page_id=queued.pk, by="test", reason="create")
    done = BookPage.objects.create(book=page.book, number=3, prompt="done", status=Status.DONE, attempt=1)
    stopped = services.pages_cancel(page_ids=[page.pk, queued.pk, done.pk], by="user:1")
    assert sorted(stopped) == sorted([page.pk, queued.pk])
    assert set(BookPage.objects.filter(pk__in=stopped).values_list("status", flat=True)) == {Status.CANCELLED}
    assert BookPage.objects.get(pk=done.pk).status == Status.DONE  # it keeps its image
    with pytest.raises(services.Superseded):  # so the worker cancels its prompt on ComfyUI
        services.claim_renew(held)
    assert services.page_claim(page_id=queued.pk, attempt=1) is None  # its message claims nothing
    assert services.page_enqueue(page_id=queued.pk, by="user:1", reason="regenerate").queued


@pytest.mark.django_db(transaction=True)
def test_a_rendering_page_shows_comfyuis_progress_and_clears_it_when_done(one_slot_book, simulator):
    import threading

    from django.db import connection

    simulator.set_faults(render_time="4")
    first, _ = one_slot_book
    seen: list[dict[str, object]] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            progress = BookPage.objects.filter(pk=first.pk).values_list("progress", flat=True).first()
            if progress:
                seen.append(progress)
            time.sleep(0.1)
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert render.page_render(page_id=first.pk, attempt=1) == "done"
    watcher.join()
    assert seen and 0 <= int(seen[0]["value"]) <= int(seen[0]["max"])  # type: ignore[call-overload]
    assert BookPage.objects.get(pk=first.pk).progress is None


# --- fair scheduling across owners ---------------------------------------------------------------


@override_settings(BOOKRENDER_OWNER_WINDOW=2)
def test_each_owner_holds_a_window_of_the_queue_and_the_next_page_goes_out_when_one_settles(
    alice, bob, django_capture_on_commit_callbacks, monkeypatch
):
    published: list[int] = []
    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda args, **kwargs: published.append(args[0]))
    big = Book.objects.create(owner=alice, title="Big", **builtin_style())
    BookPage.objects.bulk_create(BookPage(book=big, number=n, prompt=f"p{n}") for n in range(1, 21))
    small = Book.objects.create(owner=bob, title="Small", **builtin_style())
    bobs = BookPage.objects.create(book=small, number=1, prompt="a heron")
    alices = list(big.pages.order_by("number"))
    with django_capture_on_commit_callbacks(execute=True):
        services.pages_enqueue(page_ids=[p.pk for p in alices], by="user:alice", reason="create")
    with django_capture_on_commit_callbacks(execute=True):
        services.pages_enqueue(page_ids=[bobs.pk], by="user:bob", reason="create")

    # Bob's page is third in the queue, not twenty-first.
    assert published == [alices[0].pk, alices[1].pk, bobs.pk]
    assert services.pages_sweep().republished == 0  # alice's window is full: the sweeper adds nothing

    assert services.page_claim(page_id=alices[0].pk, attempt=1) is not None
    with django_capture_on_commit_callbacks(execute=True):
        services.pages_cancel(page_ids=[alices[0].pk], by="user:alice")  # it settles: stopped
    assert published[3:] == [alices[2].pk]  # and one more of hers goes out


@override_settings(BOOKRENDER_OWNER_WINDOW=2)
def test_the_sweeper_publishes_an_owners_next_pages_when_a_top_up_was_lost(
    alice, django_capture_on_commit_callbacks, monkeypatch
):
    published: list[int] = []
    monkeypatch.setattr("renders.tasks.render_page.apply_async", lambda args, **kwargs: published.append(args[0]))
    book = Book.objects.create(owner=alice, title="Big", **builtin_style())
    BookPage.objects.bulk_create(BookPage(book=book, number=n, prompt=f"p{n}") for n in range(1, 6))
    pages = list(book.pages.order_by("number"))
    services.pages_enqueue(page_ids=[p.pk for p in pages], by="user:alice", reason="create")  # no commit: none out

    with django_capture_on_commit_callbacks(execute=True):
        assert services.pages_sweep().republished == 2
    assert sorted(published) == [pages[0].pk, pages[1].pk]
    assert services.pages_sweep().republished == 0
