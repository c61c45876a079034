"""A book's place in the queue and its estimated finish, from measured render times."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from books.models import Book, BookPage
from renders.estimates import book_estimate
from renders.lease import db_now
from renders.models import ComfyInstance, RenderAttempt
from tests.conftest import builtin_style

pytestmark = pytest.mark.django_db
Status = BookPage.Status


def test_a_book_behind_another_waits_for_it_and_finishes_after_the_measured_time(alice):
    now = db_now()
    ComfyInstance.objects.create(url="http://gpu0:8188", slots=2)
    earlier = Book.objects.create(owner=alice, title="First", **builtin_style())
    mine = Book.objects.create(owner=alice, title="Mine", **builtin_style())
    for n in range(1, 5):
        BookPage.objects.create(book=earlier, number=n, prompt="p", next_attempt_at=now - timedelta(minutes=1))
    for n in range(1, 3):
        BookPage.objects.create(book=mine, number=n, prompt="p", next_attempt_at=now)
    done = BookPage.objects.create(book=mine, number=3, prompt="p", status=Status.DONE)
    for number in (1, 2):  # two measured renders of 10 s each
        attempt = RenderAttempt.objects.create(
            page=done, number=number, prompt_id=uuid.uuid4(), instance_url="http://gpu0:8188", workflow="w", seed=1,
            outcome="success",
        )  # fmt: skip
        RenderAttempt.objects.filter(pk=attempt.pk).update(finished_at=attempt.created_at + timedelta(seconds=10))

    estimate = book_estimate(book_id=mine.pk)

    assert (estimate.pending, estimate.rendering, estimate.ahead, estimate.slots) == (2, 0, 4, 2)
    assert estimate.seconds_per_page == pytest.approx(10, abs=0.5)
    # 6 pages of 10 s on 2 slots: about 30 s from now.
    assert estimate.finish_at is not None
    assert timedelta(seconds=25) <= estimate.finish_at - now <= timedelta(seconds=40)


def test_nothing_measured_or_nothing_left_gives_no_finish_time(alice):
    book = Book.objects.create(owner=alice, title="New", **builtin_style())
    BookPage.objects.create(book=book, number=1, prompt="p", next_attempt_at=db_now())
    assert book_estimate(book_id=book.pk).finish_at is None  # no render measured yet
    BookPage.objects.filter(book=book).update(status=Status.DONE)
    assert book_estimate(book_id=book.pk).pending == 0
