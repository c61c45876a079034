"""How each kind of output is shown and taken away: a still image as a thumbnail, an animation as
itself (its thumbnail the first frame), a video with a play control (no thumbnail, not in the PDF,
in the ZIP with its own extension)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from books.models import Book, BookPage

Status = BookPage.Status
# The first box of an MP4 file: enough for the worker's check and the views (not playable).
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


def animated_webp() -> bytes:
    out = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "green", "blue")]
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=250)
    return out.getvalue()


def still_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, "PNG")
    return out.getvalue()


def done_with(book: Book, number: int, data: bytes, extension: str) -> BookPage:
    name = default_storage.save(f"pages/book-{book.pk}/page-{number}-attempt-1.{extension}", ContentFile(data))
    BookPage.objects.filter(book=book, number=number).update(status=Status.DONE, image=name, image_attempt=1)
    return BookPage.objects.get(book=book, number=number)


@pytest.mark.django_db
def test_each_kind_is_shown_as_it_should_be_on_the_status_page_and_in_the_gallery(
    book: Book, alice_client: Any
) -> None:
    done_with(book, 1, still_png(), "png")
    done_with(book, 2, animated_webp(), "webp")
    done_with(book, 3, MP4_HEAD, "mp4")

    status = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert f'src="/books/{book.pk}/pages/1/thumb?v=1"' in status
    animated = f'<div class="page-thumb is-animated"><a href="/books/{book.pk}/gallery?page=2">'
    assert animated + f'<img src="/books/{book.pk}/pages/2/image?v=1"' in status
    assert f'<video controls preload="metadata" playsinline src="/books/{book.pk}/pages/3/image?v=1"' in status
    gallery = alice_client.get(f"/books/{book.pk}/gallery").content.decode()
    assert "Page 2 · ▶ animated" in gallery and "Page 3 · ▶ video" in gallery

    assert alice_client.get(f"/books/{book.pk}/pages/2/image?v=1")["Content-Type"] == "image/webp"
    assert alice_client.get(f"/books/{book.pk}/pages/3/image?v=1")["Content-Type"] == "video/mp4"
    thumb = alice_client.get(f"/books/{book.pk}/pages/2/thumb?v=1")
    with Image.open(io.BytesIO(b"".join(thumb.streaming_content))) as image:
        assert not getattr(image, "is_animated", False) and image.getpixel((10, 10))[0] > 200  # the red first frame
    assert alice_client.get(f"/books/{book.pk}/pages/3/thumb?v=1").status_code == 404


@pytest.mark.django_db
def test_the_zip_keeps_each_files_kind_and_the_pdf_has_the_stills(book: Book, alice_client: Any) -> None:
    done_with(book, 1, still_png(), "png")
    done_with(book, 2, animated_webp(), "webp")
    done_with(book, 3, MP4_HEAD, "mp4")

    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(alice_client.get(f"/books/{book.pk}/download.zip").streaming_content))
    )
    assert archive.namelist() == ["page-001.png", "page-002.webp", "page-003.mp4"]
    assert archive.read("page-003.mp4") == MP4_HEAD
    pdf = b"".join(alice_client.get(f"/books/{book.pk}/download.pdf").streaming_content)
    assert pdf.startswith(b"%PDF") and b"/Count 2" in pdf  # the still and the animation's first frame
