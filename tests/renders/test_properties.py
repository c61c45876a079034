"""Properties of the page state machine under any sequence of events, including stale ones:
retry_count always equals the failed attempts in image_error, attempt numbers only increase,
and a stored image always belongs to an attempt that was current when it finished."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from PIL import Image

from books.models import Book, BookPage
from renders import services
from renders.comfy import ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.models import RenderAttempt

Status = BookPage.Status
KINDS = [k for k in ErrorKind]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


class PageLifecycle(RuleBasedStateMachine):
    owner = None

    @initialize()
    def a_new_page(self) -> None:
        book = Book.objects.create(owner=self.owner, title="p", workflow="model-free")
        self.page = BookPage.objects.create(book=book, number=1, prompt="x")
        services.page_enqueue(page_id=self.page.pk, by="test", reason="create")
        self.seen_attempts = [1]
        self.claimed: list[int] = []

    def current(self) -> BookPage:
        return BookPage.objects.get(pk=self.page.pk)

    @rule()
    def backoff_ends(self) -> None:
        BookPage.objects.filter(pk=self.page.pk).update(next_attempt_at=timezone.now())

    @rule(stale=st.booleans())
    def a_worker_claims(self, stale: bool) -> None:
        attempt = self.current().attempt - (1 if stale else 0)
        if services.page_claim(page_id=self.page.pk, attempt=attempt):
            self.claimed.append(attempt)

    @rule(kind=st.sampled_from(KINDS), which=st.integers(0, 3))
    def an_attempt_fails(self, kind: ErrorKind, which: int) -> None:
        attempt = self.claimed[-1 - min(which, len(self.claimed) - 1)] if self.claimed else 1
        services.page_fail(page_id=self.page.pk, attempt=attempt, error=ComfyError(kind, "boom"), record=None)

    @rule(which=st.integers(0, 3))
    def an_attempt_finishes(self, which: int) -> None:
        if not self.claimed:
            return
        attempt = self.claimed[-1 - min(which, len(self.claimed) - 1)]
        page = self.current()
        record, _ = RenderAttempt.objects.get_or_create(
            page=page,
            number=attempt,
            defaults={
                "prompt_id": services.prompt_id_for(page, attempt),
                "instance_url": "http://x",
                "workflow": "model-free",
                "seed": 1,
            },
        )
        result = WaitResult(HistoryEntry("p", "success", [], None, 1, 2), 1, "success", time.time())
        if services.page_finish(record=record, image=png(), result=result, telemetry={}):
            assert self.current().image_attempt == attempt == self.current().attempt

    @rule(force=st.booleans())
    def someone_regenerates(self, force: bool) -> None:
        services.page_enqueue(page_id=self.page.pk, by="test", reason="regenerate", force=force)

    @rule()
    def the_lease_lapses_and_the_sweeper_runs(self) -> None:
        BookPage.objects.filter(pk=self.page.pk, status=Status.RENDERING).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        page = self.current()
        services.page_resume(page_id=page.pk, attempt=page.attempt)

    @invariant()
    def retry_count_counts_the_failed_attempts(self) -> None:
        page = self.current()
        assert page.retry_count == len(page.image_error)

    @invariant()
    def attempt_numbers_only_increase(self) -> None:
        page = self.current()
        assert page.attempt >= self.seen_attempts[-1]
        self.seen_attempts.append(page.attempt)
        numbers = [e["attempt"] for e in page.image_error]
        assert numbers == sorted(numbers)

    @invariant()
    def a_done_page_has_the_image_of_its_current_attempt(self) -> None:
        page = self.current()
        if page.status == Status.DONE:
            assert page.image and page.image_attempt == page.attempt


@pytest.mark.django_db
def test_the_page_state_machine_keeps_its_promises(alice, django_capture_on_commit_callbacks):
    PageLifecycle.owner = alice
    run_state_machine_as_test(
        PageLifecycle,
        settings=settings(
            max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
