"""The admin for support: counts that stay true when searching by prompt, a flag for regeneration
that does not read as OK, and big books that can still be saved."""

from __future__ import annotations

import pytest

from books.models import Book, BookPage
from books.services import PageSpec, book_create
from tests.books.conftest import page_set

pytestmark = pytest.mark.django_db


def test_searching_books_by_prompt_does_not_multiply_the_counts(root_client, alice):
    book = book_create(
        owner=alice, title="Twelve", style="model-free", pages=[PageSpec(f"a fox {n}") for n in range(12)]
    )
    page_set(book, 1, "done")
    response = root_client.get("/admin/books/book/", {"q": "fox"})
    row = response.context["cl"].result_list[0]
    assert (row.total, row.done) == (12, 1)
    assert "1 / 12" in response.content.decode()


def test_needs_regeneration_is_a_red_badge_not_a_green_tick(root_client, book):
    page_set(book, 2, "failed")
    html = root_client.get("/admin/books/bookpage/").content.decode()
    assert '<span class="badge badge-failed">needs regeneration</span>' in html
    assert "icon-yes.svg" not in html
    inline = root_client.get(f"/admin/books/book/{book.pk}/change/").content.decode()
    assert '<span class="badge badge-failed">needs regeneration</span>' in inline


def test_a_book_of_500_pages_can_be_saved_in_the_admin(root_client, alice):
    book = book_create(owner=alice, title="Long", style="model-free", pages=[PageSpec(f"p{n}") for n in range(500)])
    form = root_client.get(f"/admin/books/book/{book.pk}/change/")
    html = form.content.decode()
    assert "500 pages</a> (more than 200: listed on their own page)" in html
    assert f'href="/admin/books/bookpage/?book__id__exact={book.pk}"' in html
    response = root_client.post(f"/admin/books/book/{book.pk}/change/", {"title": "Long, renamed"})
    assert response.status_code == 302
    assert Book.objects.get(pk=book.pk).title == "Long, renamed"
    listing = root_client.get(f"/admin/books/bookpage/?book__id__exact={book.pk}")
    assert listing.status_code == 200 and listing.context["cl"].result_count == 500


def test_a_small_book_keeps_its_pages_inline_for_editing_prompts(root_client, book):
    data = {
        "title": "The Fox",
        "pages-TOTAL_FORMS": "3",
        "pages-INITIAL_FORMS": "3",
        "pages-MIN_NUM_FORMS": "0",
        "pages-MAX_NUM_FORMS": "1000",
    }
    for index, page in enumerate(book.pages.order_by("number")):
        data |= {
            f"pages-{index}-id": str(page.pk),
            f"pages-{index}-book": str(book.pk),
            f"pages-{index}-prompt": page.prompt,
        }
    data["pages-1-prompt"] = "A heron in the rain"
    response = root_client.post(f"/admin/books/book/{book.pk}/change/", data)
    assert response.status_code == 302
    assert BookPage.objects.get(book=book, number=2).prompt == "A heron in the rain"


def test_deleting_books_in_the_admin_deletes_their_files(root_client, book, django_capture_on_commit_callbacks):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    name = default_storage.save(f"pages/book-{book.pk}/page-0001-attempt-1.png", ContentFile(b"png"))
    page_set(book, 1, "done", image=name, image_attempt=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = root_client.post(f"/admin/books/book/{book.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Book.objects.filter(pk=book.pk).exists() and not default_storage.exists(name)


def test_the_admin_delete_action_deletes_the_files_of_every_selected_book(
    root_client, book, alice, django_capture_on_commit_callbacks
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    other = book_create(owner=alice, title="Other", style="model-free", pages=[PageSpec("x")])
    names = []
    for each in (book, other):
        names.append(default_storage.save(f"pages/book-{each.pk}/page-0001-attempt-1.png", ContentFile(b"png")))
        page_set(each, 1, "done", image=names[-1], image_attempt=1)
    with django_capture_on_commit_callbacks(execute=True):
        root_client.post(
            "/admin/books/book/",
            {"action": "delete_selected", "_selected_action": [book.pk, other.pk], "post": "yes"},
        )
    assert not Book.objects.exists()
    assert not any(default_storage.exists(name) for name in names)
