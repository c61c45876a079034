"""The New book form: pages as a person means them, the page count before anything renders,
every problem in one pass, and the chosen file kept after an error."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from books.models import Book
from books.services import BookInputError, pages_from_json, pages_from_text

pytestmark = pytest.mark.django_db


def post(client: Client, **data):
    return client.post("/books/new", {"title": "The Heron", "style": "model-free", **data})


def test_four_prompts_typed_one_per_line_are_four_pages():
    assert [s.prompt for s in pages_from_text("A fox\nA heron\r\nA boat\n\nA moon\n")] == [
        "A fox A heron A boat",
        "A moon",
    ]
    assert [s.prompt for s in pages_from_text("A fox\nA heron\r\nA boat\n  \nA moon\n")] == [
        "A fox",
        "A heron",
        "A boat",
        "A moon",
    ]


def test_the_form_shows_the_page_count_and_creates_nothing_until_confirmed(alice_client):
    response = post(alice_client, text="A fox\nA heron\nA boat\nA moon")
    html = response.content.decode()
    assert response.status_code == 200
    assert "This makes 4 pages" in html and "Create book and render 4 pages" in html
    assert not Book.objects.exists()

    response = post(alice_client, text="A fox\nA heron\nA boat\nA moon", confirm="1", expected_pages="4")
    book = Book.objects.get(title="The Heron")
    assert response.status_code == 302
    assert list(book.pages.values_list("prompt", flat=True)) == ["A fox", "A heron", "A boat", "A moon"]


def test_text_changed_after_the_preview_is_shown_again_not_created(alice_client):
    response = post(alice_client, text="A fox\nA heron\nA boat", confirm="1", expected_pages="4")
    assert response.status_code == 200
    assert "This makes 3 pages" in response.content.decode()
    assert not Book.objects.exists()


@pytest.mark.parametrize(
    "bad", [{"prompt": None}, 123, ["a", "b"], {"prompt": 5}, {"prompt": "x", "negative_prompt": 3}]
)
def test_a_json_prompt_that_is_not_text_is_refused_never_stringified(bad):
    with pytest.raises(BookInputError) as caught:
        pages_from_json(["fine", bad])
    assert list(caught.value.errors) == ["page 2"]


def test_every_problem_is_reported_in_one_pass(alice_client):
    pages = ["ok", {"prompt": None}, "  ", "x" * 4001, {"prompt": "y", "width": 9, "seed": -1}]
    upload = SimpleUploadedFile("pages.json", json.dumps(pages).encode())
    response = alice_client.post("/books/new", {"title": "", "style": "model-free", "upload": upload})
    form = response.context["form"]
    assert form.errors["title"] == ["A book needs a title."]
    assert form.errors["upload"] == ["4 pages need fixing:"]
    assert form.page_errors == {
        "page 2": "The prompt must be text in quotes.",
        "page 3": "The prompt is empty.",
        "page 4": "The prompt is longer than 4000 characters.",
        "page 5": (
            "Width (px) is 9: it must be a whole number from 16 to 4096; "
            "Seed is -1: it must be a whole number from 0 to 4294967295."
        ),
    }
    assert not Book.objects.exists()


def test_the_chosen_file_is_kept_after_an_error_and_used_again(alice_client):
    upload = SimpleUploadedFile("heron.json", json.dumps(["A heron", "A fox"]).encode())
    response = alice_client.post("/books/new", {"title": "", "style": "model-free", "upload": upload})
    html = response.content.decode()
    assert "Using <strong>heron.json</strong> from your last try" in html
    assert 'name="kept_upload" value="[&quot;A heron&quot;, &quot;A fox&quot;]"' in html

    # The title fixed, the file not chosen again (the browser cleared it): the kept one is used.
    form = response.context["form"]
    kept = {"kept_upload": form.kept_text, "kept_upload_name": form.kept_name}
    response = post(alice_client, **kept)
    assert "This makes 2 pages" in response.content.decode()
    response = post(alice_client, **kept, confirm="1", expected_pages="2")
    assert response.status_code == 302
    assert list(Book.objects.get().pages.values_list("prompt", flat=True)) == ["A heron", "A fox"]


def test_typed_pages_replace_a_kept_file(alice_client):
    response = post(alice_client, text="A moon", kept_upload='["A heron"]', kept_upload_name="heron.json")
    assert [spec.prompt for spec in response.context["preview"]] == ["A moon"]


def test_the_created_message_quotes_the_title_without_python_reprs(alice_client):
    response = alice_client.post(
        "/books/new",
        {"title": 'Tom\'s "big" day', "style": "model-free", "text": "A", "confirm": "1", "expected_pages": "1"},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == ['“Tom\'s "big" day” was created: 1 page queued.']
