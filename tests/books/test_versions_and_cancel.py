"""Versions: every good image is kept, a failed regenerate hides none, one click shows another.
Cancel: an owner stops a page or a whole book."""

from __future__ import annotations

import io

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from books.models import Book, BookPage, PageVersion
from tests.books.conftest import OOM_ERROR, page_set

Status = BookPage.Status


def stored_png(name: str, colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return default_storage.save(name, ContentFile(buffer.getvalue()))


def two_versions(book: Book, number: int = 1) -> BookPage:
    """Page ``number`` rendered twice (attempts 1 and 2); attempt 2 is shown."""
    page = book.pages.get(number=number)
    first = stored_png(f"pages/book-{book.pk}/v1.png", "red")
    second = stored_png(f"pages/book-{book.pk}/v2.png", "blue")
    PageVersion.objects.create(page=page, attempt=1, image=first)
    PageVersion.objects.create(page=page, attempt=2, image=second)
    return page_set(book, number, Status.DONE, image=second, image_attempt=2, attempt=2)


def test_the_card_offers_the_other_versions_and_one_click_shows_one(alice_client, book):
    two_versions(book)
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "attempt 2 (shown)" in html and "Use attempt 1" in html
    assert "kept as an earlier version" in html  # the regenerate button says what happens to it

    response = alice_client.post(f"/books/{book.pk}/pages/1/versions/1/choose")

    assert response.status_code == 302
    page = book.pages.get(number=1)
    assert page.image_attempt == 1 and page.image.name.endswith("v1.png")
    assert alice_client.get(f"/books/{book.pk}/pages/1/versions/2").status_code == 200  # still there
    assert alice_client.post(f"/books/{book.pk}/pages/1/versions/7/choose").status_code == 404


def test_a_failed_regenerate_keeps_showing_the_chosen_image(alice_client, book):
    page = two_versions(book)
    page_set(book, 1, Status.FAILED, image=page.image.name, image_attempt=2, attempt=3, image_error=[OOM_ERROR])
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert f"/books/{book.pk}/pages/1/thumb?v=2" in html  # the image, not "No image"
    assert "the failed attempt changed nothing" in html


def test_nobody_else_sees_or_chooses_versions(bob_client, book):
    two_versions(book)
    assert bob_client.get(f"/books/{book.pk}/pages/1/versions/1").status_code == 404
    assert bob_client.post(f"/books/{book.pk}/pages/1/versions/1/choose").status_code == 404
    assert book.pages.get(number=1).image_attempt == 2


def test_an_owner_stops_a_page_and_then_the_whole_book(alice_client, bob_client, book):
    assert bob_client.post(f"/books/{book.pk}/cancel").status_code == 404
    page_set(book, 3, Status.DONE, attempt=1)
    response = alice_client.post(f"/books/{book.pk}/cancel", {"page": "2"})
    assert response.status_code == 302
    assert dict(book.pages.values_list("number", "status")) == {1: Status.QUEUED, 2: Status.CANCELLED, 3: Status.DONE}

    alice_client.post(f"/books/{book.pk}/cancel")

    assert dict(book.pages.values_list("number", "status")) == {
        1: Status.CANCELLED,
        2: Status.CANCELLED,
        3: Status.DONE,  # a done page keeps its image
    }
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "Cancelled" in html and "Stop rendering" not in html  # nothing left to stop
    # A regenerate starts a cancelled page again.
    assert alice_client.post(f"/books/{book.pk}/regenerate", {"page": "1"}).status_code == 302
    assert book.pages.get(number=1).status == Status.QUEUED


def test_the_stop_button_shows_while_pages_are_pending(alice_client, book):
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "Stop rendering" in html and "Stop page" in html


def test_a_rendering_page_shows_its_progress_and_the_book_its_estimate(alice_client, book):
    page_set(book, 1, Status.RENDERING, progress={"value": 9, "max": 20, "node": "3"})
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert '<span class="page-progress">45%</span>' in html
    assert 'id="book-estimate"' in html and "no estimate yet" in html  # nothing measured yet


def test_the_gallery_shows_a_pages_versions_and_chooses_one(alice_client, bob_client, book):
    two_versions(book)
    gallery = f"/books/{book.pk}/gallery"

    shown = alice_client.get(f"{gallery}?page=1").content.decode()
    assert 'id="lightbox-versions"' in shown
    assert 'aria-current="true">attempt 2 (chosen)</a>' in shown and ">attempt 1</a>" in shown
    assert 'id="lightbox-choose"' not in shown  # the chosen one is on view

    older = alice_client.get(f"{gallery}?page=1&version=1").content.decode()
    assert f'src="/books/{book.pk}/pages/1/versions/1"' in older
    assert "Choose attempt 1 for the page" in older
    assert 'id="lightbox-choose"' not in bob_client.get(f"{gallery}?page=1&version=1").content.decode()

    response = alice_client.post(f"/books/{book.pk}/pages/1/versions/1/choose", {"next": f"{gallery}?page=1"})
    assert response.status_code == 302 and response["Location"] == f"{gallery}?page=1"
    assert book.pages.get(number=1).image_attempt == 1
