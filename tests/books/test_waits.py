"""A pending page says honestly why it waits: a retry in backoff with its countdown and the error
it is retrying, a deferral (busy or low on memory), no image server up, the page ahead of it in a
book drawn one page at a time, or a free GPU."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from renders.models import ComfyInstance
from tests.books.conftest import OOM_ERROR, page_set

pytestmark = pytest.mark.django_db
NOW = timezone.now().replace(microsecond=0)


def card(client, book, number: int):
    response = client.get(f"/books/{book.pk}/")
    return next(item for item in response.context["pages"] if item["page"].number == number)


def html_of_card(client, book, number: int) -> str:
    html = client.get(f"/books/{book.pk}/pages").content.decode()
    start = html.index(f'id="page-{number}"')
    return html[start : html.index("</li>", start)]


def in_backoff(book, number: int, *, seconds: int, retries: int = 2):
    """What page_fail leaves: attempt 3 failed, attempt 4 queued until ``seconds`` from now."""
    run = {"attempt": 1, "retry_base": 0, "at": (NOW - timedelta(minutes=2)).isoformat(), "by": "user:1"}
    error = {**OOM_ERROR, "attempt": retries + 1, "at": (NOW - timedelta(seconds=2)).isoformat()}
    return page_set(
        book,
        number,
        "queued",
        attempt=retries + 2,
        retry_count=retries + 1,
        image_error=[error],
        next_attempt_at=NOW + timedelta(seconds=seconds),
        job_metadata={"run": run},
    )


@time_machine.travel(NOW, tick=False)
def test_a_page_in_backoff_says_retrying_in_with_attempt_of_and_shows_its_error_at_once(alice_client, book):
    in_backoff(book, 1, seconds=38, retries=2)
    item = card(alice_client, book, 1)
    assert item["wait"]["text"] == "Retrying in 38 s (attempt 4 of 4)"
    assert item["error_text"] == "The graphics card ran out of memory while drawing this page."
    assert item["error_advice"].endswith("bookrender tries again by itself.")
    html = html_of_card(alice_client, book, 1)
    assert "Retrying in 38 s (attempt 4 of 4)" in html and "Waiting for a GPU" not in html
    assert f'data-countdown-until="{(NOW + timedelta(seconds=38)).isoformat()}"' in html


@time_machine.travel(NOW, tick=False)
def test_a_retry_that_is_due_says_retrying_now(alice_client, book):
    in_backoff(book, 1, seconds=-5, retries=0)
    assert card(alice_client, book, 1)["wait"]["text"] == "Retrying now (attempt 2 of 4)"


@time_machine.travel(NOW, tick=False)
def test_a_deferred_page_says_why_and_when(alice_client, book):
    deferred = {"note": "VRAM below 2048 MB on http://127.0.0.1:8188", "at": NOW.isoformat()}
    run = {"attempt": 1, "retry_base": 0, "at": (NOW - timedelta(minutes=1)).isoformat()}
    page_set(
        book, 2, "queued", next_attempt_at=NOW + timedelta(seconds=2), job_metadata={"run": run, "deferred": deferred}
    )
    wait = card(alice_client, book, 2)["wait"]
    assert (wait["text"], wait["reason"]) == ("Trying again in 2 s", "The graphics card is low on memory.")
    deferred["note"] = "no healthy ComfyUI instance has a free slot"
    page_set(book, 2, "queued", job_metadata={"run": run, "deferred": deferred})
    assert card(alice_client, book, 2)["wait"]["reason"] == "Every image server is busy or down."


def test_a_pending_page_says_when_no_image_server_is_up(alice_client, book):
    ComfyInstance.objects.create(url="http://127.0.0.1:8188", state=ComfyInstance.State.DOWN)
    assert card(alice_client, book, 1)["wait"]["text"] == "Waiting for an image server"
    ComfyInstance.objects.update(state=ComfyInstance.State.UP)
    assert card(alice_client, book, 1)["wait"]["text"] == "Waiting for a free GPU"


def test_a_sequential_book_names_the_page_it_waits_for(alice_client, book, settings):
    settings.COMFY_ALLOW_PARALLEL_PAGES = False
    page_set(book, 1, "rendering")
    wait = card(alice_client, book, 3)["wait"]
    assert (wait["text"], wait["reason"]) == ("Waiting for page 1", "This book is drawn one page at a time, in order.")
