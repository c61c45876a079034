"""/metrics: who may scrape it, what a scrape costs, and counters that never go down."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from books.models import Book, BookPage
from renders.models import RenderAttempt
from tests.conftest import builtin_style

pytestmark = pytest.mark.django_db

AUTH = {"HTTP_AUTHORIZATION": "Bearer t0ken"}


def samples(client) -> dict[str, float]:
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200
    found: dict[str, float] = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def book_with_attempts(owner, title: str, renders: list[float], failures: int = 0) -> Book:
    """A book with one page per render time (seconds), each done in one attempt after `failures`
    failed ones (OOM) on page 1; detection takes 30 ms."""
    book = Book.objects.create(owner=owner, title=title, **builtin_style())
    now = timezone.now()
    for number, seconds in enumerate(renders, start=1):
        failed = failures if number == 1 else 0
        page = BookPage.objects.create(
            book=book, number=number, prompt="p", status=BookPage.Status.DONE, retry_count=failed
        )
        for attempt in range(1, failed + 1):
            RenderAttempt.objects.create(
                page=page, number=attempt, prompt_id=uuid.uuid4(), instance_url="http://gpu0", workflow="model-free",
                seed=1, outcome=RenderAttempt.Outcome.FAILED, error={"kind": "oom"}, finished_at=now,
            )  # fmt: skip
        RenderAttempt.objects.create(
            page=page, number=page.retry_count + 1, prompt_id=uuid.uuid4(), instance_url="http://gpu0",
            workflow="model-free", seed=1, outcome=RenderAttempt.Outcome.SUCCESS, started_at=now,
            comfy_finished_at=now + timedelta(seconds=seconds),
            finished_at=now + timedelta(seconds=seconds + 0.03),
        )  # fmt: skip
    return book


def test_without_a_token_nobody_may_scrape_when_debug_is_off(client):
    # Behind the documented reverse proxy every request comes from 127.0.0.1.
    for address in ("127.0.0.1", "10.1.2.3", "8.8.8.8"):
        response = client.get("/metrics", REMOTE_ADDR=address)
        assert response.status_code == 403
        assert b"BOOKRENDER_METRICS_TOKEN" in response.content
        assert b"bookrender_pages" not in response.content


@override_settings(DEBUG=True)
def test_in_debug_local_addresses_may_scrape_without_a_token(client):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="8.8.8.8").status_code == 403


@override_settings(BOOKRENDER_METRICS_TOKEN="t0ken", DEBUG=True)
def test_with_a_token_only_its_bearers_may_scrape(client):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", **AUTH).status_code == 200


@override_settings(BOOKRENDER_METRICS_TOKEN="t0ken")
def test_histograms_and_counters_are_aggregated_by_the_database(client, alice):
    book_with_attempts(alice, "Four", renders=[0.4, 1.5, 7, 700], failures=2)
    found = samples(client)
    render = 'bookrender_render_duration_seconds_bucket{instance="http://gpu0",le="%s",workflow="model-free"}'
    assert found[render % "0.5"] == 1
    assert found[render % "2"] == 2
    assert found[render % "10"] == 3
    assert found[render % "600"] == 3
    assert found[render % "+Inf"] == 4
    assert found['bookrender_render_duration_seconds_sum{instance="http://gpu0",workflow="model-free"}'] == (
        pytest.approx(708.9)
    )
    detection = 'bookrender_completion_detection_seconds_bucket{instance="http://gpu0",le="%s"}'
    assert (found[detection % "0.025"], found[detection % "0.05"]) == (0, 4)
    assert found['bookrender_render_attempts_total{kind="oom",outcome="failed"}'] == 2
    assert found['bookrender_render_attempts_total{kind="",outcome="success"}'] == 4
    assert found["bookrender_page_retries_total"] == 2


@override_settings(BOOKRENDER_METRICS_TOKEN="t0ken")
def test_counters_never_go_down_when_books_pages_or_attempts_are_deleted(client, alice, bob):
    first = book_with_attempts(alice, "First", renders=[1, 1], failures=1)
    book_with_attempts(bob, "Second", renders=[3], failures=1)
    counters = re.compile(r"bookrender_(page_retries|render_attempts_total|render_duration|completion_detection)")
    before = {name: value for name, value in samples(client).items() if counters.match(name)}
    assert before["bookrender_page_retries_total"] == 2

    first.pages.get(number=2).delete()
    first.delete()
    bob.delete()  # cascades to the second book
    RenderAttempt.objects.all().delete()
    after = samples(client)
    for name, value in before.items():
        assert after[name] == value, name
    assert after['bookrender_pages{status="done"}'] == 0  # a gauge: it follows the pages

    book_with_attempts(alice, "Third", renders=[1], failures=0)
    assert samples(client)['bookrender_render_attempts_total{kind="",outcome="success"}'] == 4
