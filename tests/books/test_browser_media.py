"""Issue 15 in a real Chromium: a page that starts from an input image chosen in the New book form,
rendered on the simulator and shown on its card beside its input; and an animated output shown
on the status page as itself (not a still thumbnail). Screenshots go to test-artifacts/."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from books.models import Book, BookPage
from books.services import PageSpec, book_create
from tests.books import test_browser
from tests.books.test_browser import ARTIFACTS, sign_in
from tests.conftest import wait_for

# The browser (module-scoped Chromium) and tab fixtures of the other browser tests.
browser = test_browser.browser
tab = test_browser.tab

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)


def test_an_owner_creates_a_page_from_an_input_image_and_sees_both_on_its_card(
    alice: Any, live_server: Any, simulator: Any, start_worker: Any, broker: Any, tab: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    start_worker(COMFYUI_URLS=simulator.url)
    sketch = tmp_path / "sketch.png"
    picture = Image.new("RGB", (400, 300), "white")
    for x in range(0, 400, 40):  # stripes, so the rendered page is recognisably this picture
        picture.paste((220, 40, 40), (x, 0, x + 20, 300))
    picture.save(sketch)

    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/new")
    tab.fill("#id_title", "Colouring book")
    tab.click("#style-model-free-input")
    tab.fill("#id_text", "A striped sketch, coloured in")
    tab.set_input_files("#id_input_images", str(sketch))
    tab.click("#check")
    expect(tab.locator("#preview")).to_contain_text("(with input image 1)")
    tab.click("#confirm")

    book = wait_for(lambda: Book.objects.filter(title="Colouring book").first(), timeout=10)
    wait_for(
        lambda: book.pages.get().status == Status.DONE, timeout=60, message=lambda: str(book.pages.get().image_error)
    )
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    output = tab.locator("#page-1 .page-thumb img")
    expect(output).to_have_attribute("src", f"/books/{book.pk}/pages/1/thumb?v=1")
    wait_for(lambda: output.evaluate("img => img.complete && img.naturalWidth === 480"), timeout=10)
    given = tab.locator("#page-1 .page-input img")
    expect(given).to_have_attribute("alt", "Input image of page 1")
    wait_for(lambda: given.evaluate("img => img.complete && img.naturalWidth === 400"), timeout=10)
    tab.locator("#page-1").screenshot(path=str(ARTIFACTS / "input-image-card.png"))


def test_an_animated_page_animates_on_the_status_page_and_is_marked_in_the_gallery(
    alice: Any, live_server: Any, simulator: Any, start_worker: Any, broker: Any, tab: Any
) -> None:
    from playwright.sync_api import expect

    start_worker(COMFYUI_URLS=simulator.url)
    book = book_create(owner=alice, title="Blinking", style="model-free-animated", pages=[PageSpec("a blinking page")])
    wait_for(
        lambda: book.pages.get().status == Status.DONE, timeout=60, message=lambda: str(book.pages.get().image_error)
    )

    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    card = tab.locator("#page-1 .page-thumb.is-animated img")
    # The card shows the animated WebP itself (a thumbnail would be its first frame only).
    expect(card).to_have_attribute("src", f"/books/{book.pk}/pages/1/image?v=1")
    wait_for(lambda: card.evaluate("img => img.complete && img.naturalWidth === 256"), timeout=10)
    served = tab.request.get(f"{live_server.url}/books/{book.pk}/pages/1/image?v=1")
    assert served.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(served.body())) as image:
        assert image.is_animated and image.n_frames == 3
    tab.locator("#page-1").screenshot(path=str(ARTIFACTS / "animated-card.png"))

    tab.goto(f"{live_server.url}/books/{book.pk}/gallery")
    expect(tab.locator("#gallery-1")).to_contain_text("▶ animated")
    thumb = tab.locator("#gallery-1 img")
    wait_for(lambda: thumb.evaluate("img => img.complete && img.naturalWidth === 256"), timeout=10)
    tab.screenshot(path=str(ARTIFACTS / "animated-gallery.png"))
