from __future__ import annotations

import pytest
from django.db import IntegrityError

from books.models import Book, BookPage
from books.services import MAX_PAGES, BookInputError, PageSpec, book_create, pages_from_json, pages_from_text

pytestmark = pytest.mark.django_db


def test_creating_a_book_queues_every_page_in_order(alice):
    book = book_create(owner=alice, title="The Fox", workflow="model-free", pages=[PageSpec("one"), PageSpec("two")])
    pages = list(book.pages.all())
    assert [(p.number, p.prompt, p.status, p.attempt) for p in pages] == [
        (1, "one", "queued", 1),
        (2, "two", "queued", 1),
    ]
    assert all(p.job_metadata["run"]["by"] == f"user:{alice.pk}" for p in pages)


def test_page_numbers_are_unique_within_a_book(alice):
    book = Book.objects.create(owner=alice, title="x", workflow="model-free")
    BookPage.objects.create(book=book, number=1, prompt="a")
    with pytest.raises(IntegrityError):
        BookPage.objects.create(book=book, number=1, prompt="b")


def test_it_names_every_problem_with_a_book(alice):
    with pytest.raises(BookInputError) as caught:
        book_create(owner=alice, title=" ", workflow="nope", pages=[PageSpec("ok"), PageSpec("  ")])
    assert caught.value.errors == {
        "title": "a book needs a title",
        "workflow": "unknown workflow 'nope'",
        "page 2": "the prompt is empty",
    }
    assert not Book.objects.exists()


def test_a_book_with_too_many_pages_is_refused_with_the_limit():
    with pytest.raises(BookInputError, match=f"more than the limit of {MAX_PAGES}"):
        pages_from_json([f"page {n}" for n in range(10_000)])


def test_pages_from_json_accept_strings_and_objects_and_name_bad_pages():
    specs = pages_from_json(
        {"pages": ["a fox", {"prompt": "a heron", "negative_prompt": "blurry", "width": 512, "seed": 9}]}
    )
    assert specs[1] == PageSpec("a heron", "blurry", {"width": 512, "seed": 9})
    with pytest.raises(BookInputError) as caught:
        pages_from_json(["ok", 5, {"prompt": "x", "width": 9}, {"promt": "typo"}])
    assert set(caught.value.errors) == {"page 2", "page 3", "page 4"}
    assert "width must be a whole number from 64 to 4096" in caught.value.errors["page 3"]
    assert "unknown field promt" in caught.value.errors["page 4"]


def test_pages_from_text_are_paragraphs():
    assert [s.prompt for s in pages_from_text("A fox\nat dawn.\n\n\nA heron.\r\n\r\nEnd")] == [
        "A fox at dawn.",
        "A heron.",
        "End",
    ]
