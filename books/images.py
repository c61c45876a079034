"""A book's images as people take them away: small thumbnails for the cards and the gallery, a ZIP
of the images in page order, and a PDF with one page per image.

Everything goes through Django's storage API, so it works the same on a disk or an object store.
Thumbnails are cached in the storage under a name derived from the image's own name: a new image
(a regenerate) has a new name, so a thumbnail is never stale, and the old one goes with the book."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import PurePosixPath
from typing import IO

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from books.models import Book, BookPage

# Cards are about 230 px wide (460 on a 2x screen); WebP at this size is 20-40 KB instead of 1 MB.
THUMB_WIDTH = 480
THUMB_QUALITY = 80
# The PDF's pages are JPEG images: close to the PNG by eye, a tenth of the size.
PDF_QUALITY = 90


def thumbnail_name(image_name: str) -> str:
    """``pages/book-3/page-0001-…-attempt-2.png`` -> ``thumbs/book-3/page-0001-…-attempt-2.webp``."""
    path = PurePosixPath(image_name)
    return str(PurePosixPath("thumbs", *path.parent.parts[1:], path.stem + ".webp"))


def page_thumbnail(page: BookPage) -> str:
    """The storage name of the page's thumbnail, made the first time it is asked for."""
    name = thumbnail_name(str(page.image.name))
    if default_storage.exists(name):
        return name
    with page.image.open("rb") as source, Image.open(source) as image:
        image.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
        out = io.BytesIO()
        image.convert("RGB").save(out, "WEBP", quality=THUMB_QUALITY)
    # Two requests racing may both make it; the storage keeps the first name and we serve ours.
    return default_storage.save(name, ContentFile(out.getvalue()))


def _pages_with_images(book: Book) -> list[BookPage]:
    return [page for page in book.pages.filter(status=BookPage.Status.DONE).order_by("number") if page.image]


def book_zip(book: Book) -> IO[bytes]:
    """A ZIP of the book's images, named ``page-001.png`` and so on, in page order. Spooled to a
    temporary file past 32 MB: a 500-page book is about 550 MB of PNG."""
    out = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 -- closed by the response
    digits = max(3, len(str(book.pages.count())))
    # PNGs do not compress further: storing them keeps the ZIP quick to make.
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for page in _pages_with_images(book):
            suffix = PurePosixPath(str(page.image.name)).suffix or ".png"
            with page.image.open("rb") as source, archive.open(f"page-{page.number:0{digits}d}{suffix}", "w") as entry:
                while chunk := source.read(1024 * 1024):
                    entry.write(chunk)
    out.seek(0)
    return out


def book_pdf(book: Book) -> IO[bytes] | None:
    """A PDF with one page per still image, in page order; None when there is none. Pillow
    appends one image at a time, so only one is in memory however long the book is."""
    # A video has no page in a PDF; an animation gives its first frame.
    pages = [page for page in _pages_with_images(book) if page.image_kind != "video"]
    if not pages:
        return None
    out = tempfile.NamedTemporaryFile(suffix=".pdf")  # noqa: SIM115 -- returned open, closed by the response
    for index, page in enumerate(pages):
        with page.image.open("rb") as source, Image.open(source) as image:
            image.convert("RGB").save(out.name, "PDF", append=index > 0, quality=PDF_QUALITY, resolution=96.0)
    out.seek(0)
    return out


def book_files_delete(*, book_id: int, names: list[str]) -> int:
    """Delete a book's files: those its pages named (``names``) and everything left in its folders
    (images of superseded attempts, old thumbnails). Returns how many files were deleted."""
    deleted = 0
    for name in names:
        if default_storage.exists(name):
            default_storage.delete(name)
            deleted += 1
    for folder in (f"pages/book-{book_id}", f"thumbs/book-{book_id}"):
        try:
            _, files = default_storage.listdir(folder)
        except FileNotFoundError:
            continue
        for filename in files:
            default_storage.delete(f"{folder}/{filename}")
            deleted += 1
    return deleted


def page_files_delete(page: BookPage, *, versions: list[str]) -> None:
    """Delete one page's image, its other versions' images (``versions``) and their thumbnails."""
    for image in {page.image.name or "", *versions} - {""}:
        for name in (image, thumbnail_name(image)):
            if default_storage.exists(name):
                default_storage.delete(name)
