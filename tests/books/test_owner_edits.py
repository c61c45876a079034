"""Owners fix their books: edit a page and render it again, add, delete and reorder pages,
duplicate a book, delete a book with its files."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from books.images import page_thumbnail
from books.models import Book, BookPage
from tests.books.conftest import page_set
from tests.books.test_takeaway import png

pytestmark = pytest.mark.django_db
Status = BookPage.Status


def prompts(book: Book) -> list[str]:
    return list(book.pages.order_by("number").values_list("prompt", flat=True))


def test_an_owner_edits_a_failed_page_and_it_renders_again_with_the_new_settings(alice_client, book):
    page_set(book, 2, Status.FAILED)
    form = alice_client.get(f"/books/{book.pk}/pages/2/edit").content.decode()
    assert "A heron in fog" in form

    response = alice_client.post(
        f"/books/{book.pk}/pages/2/edit",
        {"prompt": "A heron in the rain", "negative_prompt": "text", "seed": "7", "width": "512", "height": ""},
    )
    page = book.pages.get(number=2)
    assert response.status_code == 302 and response["Location"] == f"/books/{book.pk}/#page-2"
    assert (page.prompt, page.negative_prompt, page.overrides) == (
        "A heron in the rain",
        "text",
        {"seed": 7, "width": 512},
    )
    assert (page.status, page.attempt) == (Status.QUEUED, 3)  # the regenerate path: a new attempt
    assert page.job_metadata["requests"][-1]["reason"] == "regenerate"


def test_a_bad_edit_is_refused_with_its_reasons_and_changes_nothing(alice_client, book):
    page_set(book, 2, Status.FAILED)
    response = alice_client.post(f"/books/{book.pk}/pages/2/edit", {"prompt": "  ", "seed": "-1", "width": "9"})
    form = response.context["form"]
    assert set(form.errors) == {"prompt", "seed", "width"}
    page = book.pages.get(number=2)
    assert (page.prompt, page.status, page.attempt) == ("A heron in fog", Status.FAILED, 2)


def test_a_page_being_rendered_cannot_be_edited(alice_client, book):
    page_set(book, 1, Status.RENDERING)
    response = alice_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "Something else"})
    assert "is being rendered" in response.content.decode()
    assert book.pages.get(number=1).prompt == "A fox at dawn"


def test_only_the_owner_may_change_pages(bob_client, root_client, book):
    page_set(book, 1, Status.DONE)
    for client in (bob_client, root_client):
        assert client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "x"}).status_code == 404
        assert client.post(f"/books/{book.pk}/pages/1/delete").status_code == 404
        assert client.post(f"/books/{book.pk}/delete").status_code == 404
    assert book.pages.get(number=1).prompt == "A fox at dawn"


def test_an_owner_adds_a_page_at_the_end_and_it_is_queued(alice_client, book):
    response = alice_client.post(f"/books/{book.pk}/pages/add", {"prompt": "A lighthouse"})
    page = book.pages.get(number=4)
    assert response.status_code == 302
    assert (page.prompt, page.status, page.attempt) == ("A lighthouse", Status.QUEUED, 1)


def test_deleting_a_page_moves_the_later_pages_up_and_deletes_its_files(
    alice_client, book, django_capture_on_commit_callbacks
):
    name = default_storage.save("pages/book-x/p1.png", ContentFile(png((1, 2, 3), (64, 64))))
    page = page_set(book, 1, Status.DONE, image=name, image_attempt=1)
    thumb = page_thumbnail(page)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(f"/books/{book.pk}/pages/1/delete")
    assert list(book.pages.values_list("number", "prompt")) == [(1, "A heron in fog"), (2, "A boat under stars")]
    assert not default_storage.exists(name) and not default_storage.exists(thumb)


def test_a_page_being_rendered_is_not_deleted(alice_client, book):
    page_set(book, 2, Status.RENDERING)
    response = alice_client.post(f"/books/{book.pk}/pages/2/delete", follow=True)
    assert book.pages.count() == 3
    assert "being rendered" in str(next(iter(response.context["messages"])))


def test_pages_move_earlier_and_later(alice_client, book):
    alice_client.post(f"/books/{book.pk}/pages/3/move", {"direction": "earlier"})
    assert prompts(book) == ["A fox at dawn", "A boat under stars", "A heron in fog"]
    alice_client.post(f"/books/{book.pk}/pages/1/move", {"direction": "later"})
    assert prompts(book) == ["A boat under stars", "A fox at dawn", "A heron in fog"]
    alice_client.post(f"/books/{book.pk}/pages/3/move", {"direction": "later"})  # already last
    assert prompts(book) == ["A boat under stars", "A fox at dawn", "A heron in fog"]


def test_duplicating_a_book_copies_its_pages_and_queues_them(alice, alice_client, book):
    book.pages.filter(number=2).update(negative_prompt="blurry", overrides={"seed": 5})
    response = alice_client.post(f"/books/{book.pk}/duplicate")
    copy = Book.objects.exclude(pk=book.pk).get()
    assert response["Location"] == f"/books/{copy.pk}/"
    assert (copy.title, copy.owner, copy.style, copy.workflow_version) == (
        "The Fox (copy)",
        alice,
        book.style,
        book.workflow_version,
    )
    assert prompts(copy) == prompts(book)
    page = copy.pages.get(number=2)
    assert (page.negative_prompt, page.overrides, page.status) == ("blurry", {"seed": 5}, Status.QUEUED)


def test_deleting_a_book_asks_first_then_deletes_it_and_every_file(
    alice_client, book, django_capture_on_commit_callbacks
):
    name = default_storage.save(f"pages/book-{book.pk}/page-0001-attempt-1.png", ContentFile(png((1, 2, 3), (64, 64))))
    old = default_storage.save(f"pages/book-{book.pk}/page-0001-attempt-0.png", ContentFile(b"an older attempt"))
    page = page_set(book, 1, Status.DONE, image=name, image_attempt=1)
    thumb = page_thumbnail(page)
    assert "Delete the book and its images" in alice_client.get(f"/books/{book.pk}/delete").content.decode()
    assert Book.objects.filter(pk=book.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(f"/books/{book.pk}/delete")
    assert response["Location"] == "/books/"
    assert not Book.objects.filter(pk=book.pk).exists()
    assert not any(default_storage.exists(n) for n in (name, old, thumb))
