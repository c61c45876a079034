"""A book you can look at and take away: small thumbnails, the gallery and its lightbox, a ZIP in
page order, a PDF with one page per image, the status filter, and what each image was drawn with."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from books.images import thumbnail_name
from renders.models import RenderAttempt
from tests.books.conftest import page_set

pytestmark = pytest.mark.django_db
COLOURS = {1: (200, 30, 30), 2: (30, 200, 30), 3: (30, 30, 200)}


def png(colour: tuple[int, int, int], size: tuple[int, int] = (768, 1024)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(out, "PNG")  # noise: a PNG as big as a real one
    image = Image.open(out).convert("RGB")
    image.paste(colour, (0, 0, size[0], size[1] // 2))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def draw(book, number: int, *, attempt: int = 1, seed: int = 42):
    name = default_storage.save(
        f"pages/book-{book.pk}/page-{number:04d}-attempt-{attempt}.png", ContentFile(png(COLOURS[number]))
    )
    page = page_set(book, number, "done", image=name, image_attempt=attempt, rendered_at=timezone.now())
    started = timezone.now() - timedelta(seconds=12)
    RenderAttempt.objects.create(
        page=page,
        number=attempt,
        prompt_id=f"00000000-0000-0000-0000-{page.pk:06d}{attempt:06d}",
        instance_url="http://127.0.0.1:8188",
        workflow="model-free",
        seed=seed,
        outcome=RenderAttempt.Outcome.SUCCESS,
        started_at=started,
        comfy_finished_at=started + timedelta(seconds=7.5),
        finished_at=started + timedelta(seconds=8),
    )
    return page


def test_a_card_loads_a_small_webp_thumbnail_made_once_and_kept(alice_client, book):
    page = draw(book, 1)
    response = alice_client.get(f"/books/{book.pk}/pages/1/thumb?v=1")
    data = b"".join(response.streaming_content)
    assert response["Content-Type"] == "image/webp"
    assert len(data) < page.image.size / 10
    assert Image.open(io.BytesIO(data)).size == (480, 640)
    assert default_storage.exists(thumbnail_name(page.image.name))
    assert f'src="/books/{book.pk}/pages/1/thumb?v=1"' in alice_client.get(f"/books/{book.pk}/").content.decode()


def test_thumbnails_and_downloads_are_404_for_other_users(bob_client, book):
    draw(book, 1)
    for path in ("pages/1/thumb", "gallery", "download.zip", "download.pdf"):
        assert bob_client.get(f"/books/{book.pk}/{path}").status_code == 404, path


def test_the_zip_holds_the_images_in_page_order(alice_client, book):
    draw(book, 3)
    draw(book, 1)
    response = alice_client.get(f"/books/{book.pk}/download.zip")
    assert response["Content-Disposition"] == 'attachment; filename="the-fox.zip"'
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.namelist() == ["page-001.png", "page-003.png"]
    assert archive.read("page-003.png") == book.pages.get(number=3).image.read()


def test_the_pdf_has_one_page_per_image_in_page_order(alice_client, book):
    for number in (2, 1, 3):
        draw(book, number)
    response = alice_client.get(f"/books/{book.pk}/download.pdf")
    data = b"".join(response.streaming_content)
    assert response["Content-Type"] == "application/pdf" and data.startswith(b"%PDF")
    # Each appended page is an incremental update; the page tree's last revision counts them all.
    assert re.findall(rb"/Count (\d+)", data)[-1] == b"3"
    # Pillow cannot read PDFs; the images inside are JPEG streams, in the order they were added.
    images = [
        Image.open(io.BytesIO(stream)) for stream in re.findall(rb"stream\r?\n(\xff\xd8.*?)endstream", data, re.S)
    ]
    assert len(images) == 3
    for image, number in zip(images, (1, 2, 3), strict=True):
        top = image.convert("RGB").getpixel((image.width // 2, image.height // 4))
        assert isinstance(top, tuple)
        assert max(abs(a - b) for a, b in zip(top, COLOURS[number], strict=True)) < 30, (number, top)


def test_a_pdf_of_a_book_without_images_explains_instead(alice_client, book):
    response = alice_client.get(f"/books/{book.pk}/download.pdf", follow=True)
    assert [str(m) for m in response.context["messages"]] == [
        "No page has an image yet, so there is nothing to put in a PDF."
    ]


def test_the_gallery_opens_a_page_in_the_lightbox_with_previous_next_and_zoom(alice_client, book):
    for number in (1, 2, 3):
        draw(book, number)
    html = alice_client.get(f"/books/{book.pk}/gallery?page=2").content.decode()
    assert html.count('<li><a href="?page=') == 3
    assert 'id="lightbox"' in html and f'src="/books/{book.pk}/pages/2/image?v=1"' in html
    assert 'id="lightbox-previous" href="?page=1"' in html and 'id="lightbox-next" href="?page=3"' in html
    assert 'id="lightbox-zoom" href="?page=2&amp;zoom=1"' in html
    first = alice_client.get(f"/books/{book.pk}/gallery?page=1&zoom=1").content.decode()
    assert 'id="lightbox-previous"' not in first and 'class="lightbox is-zoomed"' in first


def test_the_status_filter_shows_only_the_chosen_pages_and_counts_the_whole_book(alice_client, book):
    draw(book, 1)
    page_set(book, 2, "failed")
    response = alice_client.get(f"/books/{book.pk}/?status=failed")
    assert [item["page"].number for item in response.context["pages"]] == [2]
    assert response.context["counts"]["total"] == 3
    html = response.content.decode()
    assert 'id="filter-failed" aria-current="true">Needs attention 1<' in html
    assert f'data-live-url="/books/{book.pk}/pages?status=failed"' in html
    assert [i["page"].number for i in alice_client.get(f"/books/{book.pk}/pages?status=done").context["pages"]] == [1]
    assert [i["page"].number for i in alice_client.get(f"/books/{book.pk}/?status=pending").context["pages"]] == [3]


def test_a_done_page_shows_its_seed_size_negative_prompt_and_render_time(alice_client, book):
    draw(book, 1, seed=1234)
    book.pages.filter(number=1).update(negative_prompt="blurry", overrides={"width": 512})
    drawn = alice_client.get(f"/books/{book.pk}/").context["pages"][0]["drawn_with"]
    assert drawn == {"seed": 1234, "width": 512, "height": 1024, "negative_prompt": "blurry", "render_seconds": 7.5}
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "<dt>Seed</dt><dd>1234</dd>" in html and "512 \u00d7 1024 px" in html and "7.5 s" in html
