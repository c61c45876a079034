"""Large books: live updates send only what changed, and the status page and the API hold a
bounded number of pages per answer, whatever the book's size."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from books import status as book_status
from books import views as book_views
from books.models import Book, BookPage
from books.services import PageSpec, book_create
from tests.books.conftest import page_set

Status = BookPage.Status


def big_book(owner: User, pages: int) -> Book:
    book = book_create(
        owner=owner, title="The Long Road", style="model-free", pages=[PageSpec(f"Mile {n}") for n in range(pages)]
    )
    # Nothing changed for a minute: a poll's cursor is past every page's last change.
    book.pages.update(updated_at=timezone.now() - timedelta(minutes=1))
    return book


def cursor_of(html: str) -> str:
    start = html.index('data-cursor="') + len('data-cursor="')
    return html[start : html.index('"', start)]


def poll(client: Client, book: Book, cursor: str, query: str = "") -> str:
    response = client.get(f"/books/{book.pk}/pages?{query}since={cursor}")
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def long_book(alice: User) -> Book:
    return big_book(alice, 500)


def test_a_live_update_of_a_500_page_book_sends_only_the_summary_when_nothing_changed(alice_client, long_book):
    first = alice_client.get(f"/books/{long_book.pk}/pages").content.decode()
    assert first.count('<li class="page-card') == book_status.CARDS_PER_PART

    with CaptureQueriesContext(connection) as queries:
        quiet = poll(alice_client, long_book, cursor_of(first))

    assert 'data-partial="true"' in quiet
    assert '<li class="page-card' not in quiet
    assert "0 of 500 pages done" in quiet  # the summary still comes
    assert len(quiet.encode()) < 5_000, len(quiet.encode())
    # The pages are read once, with the few fields the counts need: never their prompts or errors.
    page_reads = [q["sql"] for q in queries.captured_queries if 'FROM "books_bookpage"' in q["sql"]]
    assert not [sql for sql in page_reads if '"books_bookpage"."prompt"' in sql], page_reads


def test_a_live_update_after_one_page_changed_sends_that_card_and_counts_it(alice_client, long_book):
    cursor = cursor_of(alice_client.get(f"/books/{long_book.pk}/pages").content.decode())
    page_set(long_book, 7, Status.DONE)

    changed = poll(alice_client, long_book, cursor)

    assert changed.count('<li class="page-card') == 1
    assert 'id="page-7"' in changed and "is-done" in changed
    assert "1 of 500 pages done" in changed  # the summary agrees with the card
    assert cursor_of(changed) != cursor


def test_a_live_update_answers_every_card_when_the_tab_shows_other_pages(alice_client, book):
    cursor = cursor_of(alice_client.get(f"/books/{book.pk}/pages").content.decode())
    BookPage.objects.filter(book=book, number=3).delete()  # the tab still has a card for page 3

    html = poll(alice_client, book, cursor)

    assert 'data-partial="false"' in html
    assert html.count('<li class="page-card') == 2
    # A cursor from nowhere (an old tab, a hand-made URL) also gets the whole view, not an error.
    assert 'data-partial="false"' in poll(alice_client, book, "nonsense")


def test_a_live_update_of_a_filtered_view_sends_a_page_that_left_it_as_a_new_view(alice_client, book):
    page_set(book, 2, Status.FAILED)
    page_set(book, 3, Status.FAILED)
    cursor = cursor_of(alice_client.get(f"/books/{book.pk}/pages?status=failed").content.decode())
    page_set(book, 2, Status.QUEUED, image_error=[], retry_count=0)

    html = poll(alice_client, book, cursor, "status=failed&")

    assert 'data-partial="false"' in html
    assert 'id="page-3"' in html and 'id="page-2"' not in html


@override_settings(COMFY_ALLOW_PARALLEL_PAGES=False)
def test_in_a_book_drawn_in_order_the_script_is_told_which_page_the_others_wait_for(alice_client, alice):
    from renders.models import ComfyInstance

    # Instances a live test's prober recorded as down (it commits from its own process) would make
    # every page wait for an image server instead.
    ComfyInstance.objects.all().delete()
    book = big_book(alice, 6)
    page_set(book, 1, Status.RENDERING)
    first = alice_client.get(f"/books/{book.pk}/pages").content.decode()
    assert 'data-first-active="1"' in first
    assert first.count("data-behind>Waiting for page 1") == 5

    page_set(book, 1, Status.DONE)  # page 2 is next; pages 3 to 6 are untouched rows
    html = poll(alice_client, book, cursor_of(first))

    assert 'data-first-active="2"' in html
    assert html.count('<li class="page-card') == 2  # page 1 (done) and page 2 (no longer behind)
    assert "Waiting for a free GPU" in html


def test_the_status_page_of_a_large_book_shows_one_part_of_its_cards(alice_client, alice, monkeypatch):
    monkeypatch.setattr(book_status, "CARDS_PER_PART", 10)
    book = big_book(alice, 25)

    html = alice_client.get(f"/books/{book.pk}/?part=3").content.decode()

    assert html.count('<li class="page-card') == 5
    assert 'id="page-21"' in html and 'id="page-25"' in html and 'id="page-20"' not in html
    assert ">Pages 1\u201310</a>" in html and ">Pages 11\u201320</a>" in html
    assert 'aria-current="true">Pages 21\u201325</a>' in html
    assert f'data-live-url="/books/{book.pk}/pages?part=3"' in html
    assert "0 of 25 pages done" in html  # the summary is the whole book's


def test_the_status_page_and_its_live_part_cost_the_same_statements_for_any_book_size(alice_client, alice):
    def statements(pages: int) -> tuple[int, int]:
        book = big_book(alice, pages)
        with CaptureQueriesContext(connection) as full:
            html = alice_client.get(f"/books/{book.pk}/pages").content.decode()
        page_set(book, 2, Status.DONE)
        with CaptureQueriesContext(connection) as live:
            poll(alice_client, book, cursor_of(html))
        return len(full), len(live)

    assert statements(5) == statements(book_status.CARDS_PER_PART + 40)


def test_the_api_answers_a_large_book_in_bounded_parts(alice_client, alice, monkeypatch):
    monkeypatch.setattr(book_views, "API_PAGES_PER_ANSWER", 10)
    book = big_book(alice, 25)
    page_set(book, 24, Status.DONE)

    first = alice_client.get(f"/api/books/{book.pk}").json()
    second = alice_client.get(first["next"]).json()
    third = alice_client.get(second["next"]).json()

    assert [len(answer["pages"]) for answer in (first, second, third)] == [10, 10, 5]
    assert first["next"] == f"/api/books/{book.pk}?after=10"
    assert third["next"] is None
    assert [page["number"] for page in third["pages"]] == [21, 22, 23, 24, 25]
    assert (
        first["counts"]
        == third["counts"]
        == {
            "queued": 24,
            "rendering": 0,
            "done": 1,
            "failed": 0,
            "cancelled": 0,
            "total": 25,
        }
    )
    assert alice_client.get(f"/api/books/{book.pk}?after=x").status_code == 400


# --- creating books: bounded, and throttled per user ----------------------------------------------


def test_creating_the_largest_book_allowed_costs_the_same_statements_as_a_small_one(alice):
    from books.services import MAX_PAGES, BookInputError

    def statements(pages: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            book_create(owner=alice, title="Big", style="model-free", pages=[PageSpec(f"p{n}") for n in range(pages)])
        return len(queries)

    assert statements(MAX_PAGES) == statements(3)
    with pytest.raises(BookInputError):  # a larger book is refused before anything is written
        book_create(
            owner=alice, title="Too big", style="model-free", pages=[PageSpec("p") for _ in range(MAX_PAGES + 1)]
        )


def test_too_many_new_books_get_429_with_retry_after_in_json_and_html(alice, alice_client, book, settings):
    settings.BOOKRENDER_NEW_BOOKS_PER_HOUR = 1
    form = {"title": "Heron", "style": "model-free", "text": "A heron.", "confirm": "1", "expected_pages": "1"}
    assert alice_client.post("/books/new", form).status_code == 302

    html = alice_client.post("/books/new", form)
    as_json = alice_client.post("/books/new", form, HTTP_ACCEPT="application/json")
    copy = alice_client.post(f"/books/{book.pk}/duplicate", HTTP_ACCEPT="application/json")

    wait = as_json.json()["retry_after"]
    assert 0 < wait <= 3600
    assert as_json.status_code == 429 and as_json["Retry-After"] == str(wait)
    assert as_json.json()["error"] == f"Too many new books: try again in {wait} s."
    assert html.status_code == 429 and html["Retry-After"] == str(wait)
    assert f"Too many new books: try again in {wait} s." in html.content.decode()
    assert copy.status_code == 429  # a copy is a new book too
    assert Book.objects.filter(owner=alice).count() == 2  # the fixture's book and the first heron
