"""Properties of the page state machine under any sequence of events, including stale ones and
two workers holding claims on the same attempt (one of them slow: the sweeper handed its page on):
retry_count always equals the failed attempts in image_error, attempt numbers only increase, a
Done page's image file exists and belongs to its current attempt and claim, and no file of a
superseded or lost claim remains."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from PIL import Image

from books.models import Book, BookPage
from renders import services
from renders.comfy import ComfyError, ErrorKind, HistoryEntry, WaitResult
from renders.models import RenderAttempt
from tests.conftest import builtin_style

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
        book = Book.objects.create(owner=self.owner, title="p", **builtin_style())
        self.page = BookPage.objects.create(book=book, number=1, prompt="x")
        services.page_enqueue(page_id=self.page.pk, by="test", reason="create")
        self.seen_attempts = [1]
        self.claims: list[services.Claim] = []

    def current(self) -> BookPage:
        return BookPage.objects.get(pk=self.page.pk)

    @rule()
    def backoff_ends(self) -> None:
        BookPage.objects.filter(pk=self.page.pk).update(next_attempt_at=timezone.now())

    def pick(self, which: int) -> services.Claim | None:
        """One of the claims workers hold: the newest, or an older one (stale or lost)."""
        return self.claims[-1 - min(which, len(self.claims) - 1)] if self.claims else None

    @rule(stale=st.booleans())
    def a_worker_claims(self, stale: bool) -> None:
        attempt = self.current().attempt - (1 if stale else 0)
        claim = services.page_claim(page_id=self.page.pk, attempt=attempt)
        if claim:
            self.claims.append(claim)

    @rule(which=st.integers(0, 3))
    def a_worker_renews_its_lease(self, which: int) -> None:
        claim = self.pick(which)
        if claim is not None:
            try:
                services.claim_renew(claim)
            except (services.Superseded, services.ClaimLost):
                pass

    def snapshot(self) -> tuple[object, ...]:
        page = self.current()
        return (page.status, page.attempt, page.claim, page.retry_count, page.image.name, len(page.image_error))

    def holds(self, claim: services.Claim) -> bool:
        page = self.current()
        return (page.status, page.attempt, page.claim) == (Status.RENDERING, claim.attempt, claim.token)

    @rule(kind=st.sampled_from(KINDS), which=st.integers(0, 3))
    def an_attempt_fails(self, kind: ErrorKind, which: int) -> None:
        claim = self.pick(which)
        if claim is None:
            return
        held, before = self.holds(claim), self.snapshot()
        services.page_fail(claim=claim, error=ComfyError(kind, "boom"), record=None)
        if not held:
            assert self.snapshot() == before, "a claim that no longer holds the page changed it"

    @rule(which=st.integers(0, 3))
    def an_attempt_finishes(self, which: int) -> None:
        claim = self.pick(which)
        if claim is None:
            return
        attempt = claim.attempt
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
        held, before = self.holds(claim), self.snapshot()
        if services.page_finish(claim=claim, record=record, image=png(), result=result, telemetry={}):
            assert self.current().image_attempt == attempt == self.current().attempt
        if not held:
            assert self.snapshot() == before, "a claim that no longer holds the page stored an image"

    @rule(force=st.booleans())
    def someone_regenerates(self, force: bool) -> None:
        services.page_enqueue(page_id=self.page.pk, by="test", reason="regenerate", force=force)

    @rule()
    def the_lease_lapses_and_the_sweeper_runs(self) -> None:
        BookPage.objects.filter(pk=self.page.pk, status=Status.RENDERING).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        page = self.current()
        services.page_resume(page_id=page.pk, attempt=page.attempt, token=page.claim)

    @rule()
    def a_slow_workers_page_is_handed_to_another_worker(self) -> None:
        """The lease lapsed (the worker is slow, not dead), the sweeper resumed the page and a
        second worker claimed the same attempt: two claims on one attempt, the older one lost."""
        self.the_lease_lapses_and_the_sweeper_runs()
        self.a_worker_claims(stale=False)

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
    def a_done_page_has_the_image_file_of_its_current_attempt(self) -> None:
        page = self.current()
        if page.status == Status.DONE:
            assert page.image and page.image_attempt == page.attempt
            assert page.image.name.startswith(services.page_image_prefix(page, page.attempt))
            assert default_storage.exists(str(page.image.name)), "a Done page whose image file is gone"

    @invariant()
    def every_file_is_a_version_and_every_version_has_its_file(self) -> None:
        page = self.current()
        folder = Path(default_storage.path(f"pages/book-{page.book_id}"))
        files = sorted(p.name for p in folder.glob("*")) if folder.exists() else []
        versions = sorted(Path(str(v.image.name)).name for v in page.versions.all())
        assert files == versions, "a superseded or lost claim left a file behind, or a version lost its file"

    @invariant()
    def outcomes_agree_with_the_page(self) -> None:
        for record in RenderAttempt.objects.filter(page_id=self.page.pk, outcome="success"):
            assert self.current().versions.filter(attempt=record.number).exists()


@pytest.mark.django_db
def test_the_page_state_machine_keeps_its_promises(alice, django_capture_on_commit_callbacks):
    PageLifecycle.owner = alice
    run_state_machine_as_test(
        PageLifecycle,
        settings=settings(
            max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
