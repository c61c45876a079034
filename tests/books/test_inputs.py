"""Input images: owners upload them on Edit page and Add a page; each is decoded with Pillow (the
name and extension count for nothing), limited in bytes and pixels, and refused with a sentence."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from books.inputs import InputImageError, input_image_check
from books.models import Book, BookPage
from tests.books.conftest import page_set

Status = BookPage.Status


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (40, 30), colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, kind)
    return out.getvalue()


def upload(data: bytes, name: str = "sketch.png") -> ContentFile[bytes]:
    return ContentFile(data, name=name)


@pytest.mark.parametrize(("kind", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_it_takes_png_jpeg_and_webp_by_their_content(kind: str, ext: str) -> None:
    assert input_image_check(image_bytes(kind)) == ext


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"%PDF-1.4 not a picture at all", "not an image Pillow can read"),
        (image_bytes("PNG")[:60], "not an image Pillow can read"),  # a truncated PNG
        (image_bytes("GIF"), "The image is GIF"),
        (image_bytes("BMP"), "The image is BMP"),
    ],
)
def test_it_refuses_what_is_not_a_png_jpeg_or_webp(data: bytes, says: str) -> None:
    with pytest.raises(InputImageError) as caught:
        input_image_check(data)
    assert says in str(caught.value)


def test_it_refuses_too_many_bytes_and_too_many_pixels(settings: Any) -> None:
    settings.BOOKRENDER_INPUT_MAX_PIXELS = 100 * 100
    with pytest.raises(InputImageError, match=r"101 x 100 pixels, more than the limit of 10,000 pixels"):
        input_image_check(image_bytes(size=(101, 100)))
    settings.BOOKRENDER_INPUT_MAX_MB = 1
    noisy = Image.effect_noise((1200, 1200), 100).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, "PNG")
    settings.BOOKRENDER_INPUT_MAX_PIXELS = 10**8
    with pytest.raises(InputImageError, match=r"MB, more than the limit of 1 MB"):
        input_image_check(out.getvalue())


@pytest.mark.django_db
def test_an_owner_adds_an_input_image_on_edit_page_and_the_page_renders_again(book: Book, alice_client: Any) -> None:
    page_set(book, 1, Status.DONE, attempt=1)
    response = alice_client.post(
        f"/books/{book.pk}/pages/1/edit", {"prompt": "A fox at dawn", "input_image": upload(image_bytes(), "photo.txt")}
    )
    assert response.status_code == 302
    page = book.pages.get(number=1)
    assert page.status == Status.QUEUED and page.attempt == 2
    assert str(page.input_image.name).startswith("inputs/") and str(page.input_image.name).endswith(".png")
    with default_storage.open(str(page.input_image.name), "rb") as stored:
        assert stored.read() == image_bytes()
    shown = alice_client.get(f"/books/{book.pk}/pages/1/input")
    assert shown.status_code == 200 and shown["Content-Type"] == "image/png"
    assert b"".join(shown.streaming_content) == image_bytes()
    assert b"Input image of page 1" in alice_client.get(f"/books/{book.pk}/").content


@pytest.mark.django_db
def test_a_bad_upload_is_refused_on_the_form_and_changes_nothing(book: Book, alice_client: Any) -> None:
    page_set(book, 1, Status.DONE, attempt=1)
    response = alice_client.post(
        f"/books/{book.pk}/pages/1/edit",
        {"prompt": "changed", "input_image": upload(b"GIF89a... not really", "cat.png")},
    )
    assert response.status_code == 200
    assert b"The file is not an image Pillow can read" in response.content
    page = book.pages.get(number=1)
    assert page.prompt == "A fox at dawn" and page.attempt == 1 and not page.input_image


@pytest.mark.django_db
def test_an_owner_removes_an_input_image_and_its_file_goes(
    book: Book, alice_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    page_set(book, 1, Status.DONE, attempt=1)
    alice_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "A fox", "input_image": upload(image_bytes())})
    name = str(book.pages.get(number=1).input_image.name)
    page_set(book, 1, Status.DONE)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "A fox", "remove_input_image": "on"})
    assert response.status_code == 302
    assert not book.pages.get(number=1).input_image
    assert not default_storage.exists(name)


@pytest.mark.django_db
def test_other_users_can_neither_see_nor_change_an_input_image(book: Book, alice_client: Any, bob_client: Any) -> None:
    page_set(book, 1, Status.DONE, attempt=1)
    alice_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "A fox", "input_image": upload(image_bytes())})
    page_set(book, 1, Status.DONE)
    assert bob_client.get(f"/books/{book.pk}/pages/1/input").status_code == 404
    response = bob_client.post(f"/books/{book.pk}/pages/1/edit", {"prompt": "mine now", "remove_input_image": "on"})
    assert response.status_code in (403, 404)
    assert book.pages.get(number=1).input_image


@pytest.mark.django_db
def test_a_new_page_can_carry_an_input_image(book: Book, alice_client: Any) -> None:
    response = alice_client.post(
        f"/books/{book.pk}/pages/add",
        {"prompt": "A sketch of a hare", "input_image": upload(image_bytes("JPEG"), "hare.jpg")},
    )
    assert response.status_code == 302
    page = book.pages.get(number=4)
    assert str(page.input_image.name).endswith(".jpg") and page.status == Status.QUEUED


@pytest.mark.django_db
def test_the_new_book_form_gives_input_images_to_pages_in_order_across_the_preview(alice_client: Any) -> None:
    first = alice_client.post(
        "/books/new",
        {
            "title": "Sketches",
            "style": "model-free-input",
            "text": "one\ntwo\nthree",
            "input_images": [
                upload(image_bytes(colour="red"), "a.png"),
                upload(image_bytes("JPEG", colour="blue"), "b.jpg"),
            ],
        },
    )
    assert first.status_code == 200 and b"This makes 3 pages" in first.content
    assert b"(with input image 2)" in first.content and b"Using the 2 input images from your last try" in first.content
    kept = first.context["form"].kept_input_names
    # The browser sends no files with the confirm: the names kept on the preview stand in for them.
    second = alice_client.post(
        "/books/new",
        {
            "title": "Sketches",
            "style": "model-free-input",
            "text": "one\ntwo\nthree",
            "kept_inputs": ",".join(kept),
            "expected_pages": "3",
            "confirm": "1",
        },
    )
    assert second.status_code == 302
    book = Book.objects.get(title="Sketches")
    names = [str(page.input_image.name) for page in book.pages.order_by("number")]
    assert names[0].endswith(".png") and names[1].endswith(".jpg") and names[2] == ""
    with default_storage.open(names[1], "rb") as stored:
        assert stored.read() == image_bytes("JPEG", colour="blue")


@pytest.mark.django_db
def test_the_new_book_form_refuses_a_bad_image_and_more_images_than_pages(alice_client: Any) -> None:
    bad = alice_client.post(
        "/books/new",
        {"title": "Bad", "style": "model-free-input", "text": "one", "input_images": [upload(b"nope", "x.png")]},
    )
    assert bad.status_code == 200 and b"Image 1 (x.png): The file is not an image Pillow can read" in bad.content
    many = alice_client.post(
        "/books/new",
        {
            "title": "Many",
            "style": "model-free-input",
            "text": "one",
            "input_images": [upload(image_bytes(colour="red")), upload(image_bytes(colour="blue"))],
        },
    )
    assert many.status_code == 200 and b"2 input images for 1 pages" in many.content
    forged = alice_client.post(
        "/books/new",
        {"title": "Forged", "style": "model-free-input", "text": "one", "kept_inputs": "pages/book-1/secret.png"},
    )
    assert forged.status_code == 200 and b"choose them again" in forged.content
    assert not Book.objects.filter(title__in=["Bad", "Many", "Forged"]).exists()
