from __future__ import annotations

import pytest
from django.db import IntegrityError

from books.models import Book, BookPage
from books.services import MAX_PAGES, BookInputError, PageSpec, book_create, pages_from_json, pages_from_text
from tests.conftest import builtin_style
from workflows.models import Style

pytestmark = pytest.mark.django_db


def test_creating_a_book_queues_every_page_in_order(alice):
    book = book_create(owner=alice, title="The Fox", style="model-free", pages=[PageSpec("one"), PageSpec("two")])
    pages = list(book.pages.all())
    assert [(p.number, p.prompt, p.status, p.attempt) for p in pages] == [
        (1, "one", "queued", 1),
        (2, "two", "queued", 1),
    ]
    assert all(p.job_metadata["run"]["by"] == f"user:{alice.pk}" for p in pages)


def test_page_numbers_are_unique_within_a_book(alice):
    book = Book.objects.create(owner=alice, title="x", **builtin_style())
    BookPage.objects.create(book=book, number=1, prompt="a")
    with pytest.raises(IntegrityError):
        BookPage.objects.create(book=book, number=1, prompt="b")


def test_it_names_every_problem_with_a_book(alice):
    with pytest.raises(BookInputError) as caught:
        book_create(owner=alice, title=" ", style="nope", pages=[PageSpec("ok"), PageSpec("  ")])
    assert caught.value.errors == {
        "title": "a book needs a title",
        "style": "there is no style 'nope'",
        "page 2": "the prompt is empty",
    }
    assert not Book.objects.exists()


def test_a_book_with_too_many_pages_is_refused_with_the_limit():
    with pytest.raises(BookInputError, match=f"more than the limit of {MAX_PAGES}"):
        pages_from_json([f"page {n}" for n in range(10_000)])


def test_pages_from_json_accept_strings_and_objects_and_name_bad_pages(db):
    style = Style.objects.get(slug="model-free")
    specs = pages_from_json(
        {"pages": ["a fox", {"prompt": "a heron", "negative_prompt": "blurry", "width": 512, "seed": 9}]}
    )
    assert specs[1] == PageSpec("a heron", "blurry", {"width": 512, "seed": 9})
    with pytest.raises(BookInputError) as caught:
        pages_from_json(["ok", 5, {"prompt": "x", "width": 9}, {"promt": "typo"}], style=style)
    assert set(caught.value.errors) == {"page 2", "page 3", "page 4"}
    assert "Width (px) is 9: it must be a whole number from 16 to 4096" in caught.value.errors["page 3"]
    assert "there is no property 'promt'" in caught.value.errors["page 4"]


def test_pages_from_text_are_paragraphs():
    assert [s.prompt for s in pages_from_text("A fox\nat dawn.\n\n\nA heron.\r\n\r\nEnd")] == [
        "A fox at dawn.",
        "A heron.",
        "End",
    ]
