"""Page files in an S3-compatible object store (moto's server on loopback, tests/s3server.py):
renders, versions, thumbnails and inputs go to the bucket, browsers get presigned URLs after the
ownership check, downloads read from the bucket, deletes empty it, and a store that is down gives
a clear 503 page and a page that waits instead of a page marked Done without its file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings
from PIL import Image

from books.images import page_thumbnail
from books.inputs import input_image_store
from books.models import BookPage
from books.services import PageSpec, book_create, book_delete
from ops.devstack import free_port
from tests.books.conftest import client_for
from tests.s3server import S3Server, storages_for

Status = BookPage.Status


def png(colour: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def local_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def finish_page(page: BookPage, data: bytes, attempt: int = 1) -> BookPage:
    """Store a render for the page as page_finish does, and mark it Done."""
    name = default_storage.save(
        f"pages/book-{page.book_id}/page-{page.number:04d}-attempt-{attempt}.png", ContentFile(data)
    )
    BookPage.objects.filter(pk=page.pk).update(status=Status.DONE, image=name, image_attempt=attempt)
    page.versions.create(attempt=attempt, image=name)
    return BookPage.objects.get(pk=page.pk)


@pytest.mark.django_db
def test_a_page_image_is_a_presigned_redirect_for_its_owner_only(s3: S3Server, alice: Any, bob: Any) -> None:
    book = book_create(owner=alice, title="Fox", style="model-free", pages=[PageSpec("a fox")])
    page = finish_page(book.pages.get(), png("red"))

    response = client_for(alice).get(f"/books/{book.pk}/pages/1/image?v=1")
    assert response.status_code == 302
    url = response["Location"]
    assert (
        url.startswith(s3.endpoint + f"/{s3.bucket}/pages/")
        and "X-Amz-Signature=" in url
        and "X-Amz-Expires=300" in url
    )
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "image/png"
    assert fetched.content == s3.read(str(page.image.name))
    # Range requests work on the presigned URL (a video's seek bar needs them).
    assert requests.get(url, headers={"Range": "bytes=0-3"}, timeout=10).content == b"\x89PNG"

    assert client_for(bob).get(f"/books/{book.pk}/pages/1/image?v=1").status_code == 404
    # The bucket is private: the object without a signature is refused.
    assert requests.get(f"{s3.endpoint}/{s3.bucket}/{page.image.name}", timeout=10).status_code == 403
    assert local_files() == []


@pytest.mark.django_db
def test_thumbnails_zip_and_pdf_come_from_the_bucket(s3: S3Server, alice: Any) -> None:
    book = book_create(owner=alice, title="Fox", style="model-free", pages=[PageSpec("one"), PageSpec("two")])
    first, second = book.pages.order_by("number")
    finish_page(first, png("red"))
    finish_page(second, png("blue"))
    client = client_for(alice)

    thumb = client.get(f"/books/{book.pk}/pages/1/thumb?v=1")
    assert thumb.status_code == 302
    assert [k for k in s3.keys("thumbs/")] == [page_thumbnail(BookPage.objects.get(pk=first.pk))]
    with Image.open(io.BytesIO(requests.get(thumb["Location"], timeout=10).content)) as image:
        assert image.format == "WEBP" and image.getpixel((1, 1))[0] > 200  # red

    archive = zipfile.ZipFile(io.BytesIO(b"".join(client.get(f"/books/{book.pk}/download.zip").streaming_content)))
    assert archive.namelist() == ["page-001.png", "page-002.png"]
    assert archive.read("page-002.png") == png("blue")
    pdf = client.get(f"/books/{book.pk}/download.pdf")
    assert pdf.status_code == 200 and b"".join(pdf.streaming_content).startswith(b"%PDF")
    assert local_files() == []


@pytest.mark.django_db(transaction=True)
def test_deleting_a_book_empties_its_keys_but_keeps_an_input_another_book_uses(s3: S3Server, alice: Any) -> None:
    shared = input_image_store(png("green"))
    own = input_image_store(png("yellow"))
    book = book_create(
        owner=alice,
        title="Fox",
        style="model-free-input",
        pages=[PageSpec("one", input_image=shared), PageSpec("two", input_image=own)],
    )
    book_create(owner=alice, title="Other", style="model-free-input", pages=[PageSpec("x", input_image=shared)])
    finish_page(book.pages.get(number=1), png("red"))
    page_thumbnail(BookPage.objects.get(book=book, number=1))
    assert len(s3.keys(f"pages/book-{book.pk}/")) == 1 and len(s3.keys(f"thumbs/book-{book.pk}/")) == 1

    book_delete(book=book)

    assert s3.keys(f"pages/book-{book.pk}/") == [] and s3.keys(f"thumbs/book-{book.pk}/") == []
    assert s3.keys("inputs/") == [shared]


@pytest.mark.django_db
def test_the_same_input_image_is_stored_once_and_never_overwritten(s3: S3Server) -> None:
    first = input_image_store(png("red"))
    assert input_image_store(png("red")) == first
    assert first.startswith("inputs/") and first.endswith(".png")
    # A second write of a name that exists is refused by the store (If-None-Match: *), not applied.
    assert default_storage.save(first, ContentFile(b"something else")) == first
    assert s3.read(first) == png("red")


@pytest.mark.django_db
def test_a_store_that_is_down_gives_a_clear_page_not_a_500(s3: S3Server, alice: Any) -> None:
    book = book_create(owner=alice, title="Fox", style="model-free", pages=[PageSpec("a fox")])
    finish_page(book.pages.get(), png("red"))
    client = client_for(alice)
    dead = f"http://127.0.0.1:{free_port()}"
    with override_settings(STORAGES=storages_for(s3, endpoint=dead)):
        for url in (
            f"/books/{book.pk}/pages/1/thumb?v=1",
            f"/books/{book.pk}/download.zip",
            f"/books/{book.pk}/download.pdf",
        ):
            response = client.get(url)
            assert response.status_code == 503, url
            assert b"can't be reached just now" in response.content
        edit = client.post(
            f"/books/{book.pk}/pages/1/edit",
            {"prompt": "a fox", "input_image": ContentFile(png("red"), name="sketch.png")},
        )
        assert edit.status_code == 200 and b"The file storage did not answer" in edit.content
    assert BookPage.objects.get(pk=book.pages.get().pk).status == Status.DONE  # nothing changed
