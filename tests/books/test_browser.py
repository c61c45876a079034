"""The status page and the admin in a real headless Chromium (Debian's `chromium`, driven by
Playwright; never a downloaded browser), against the live server, real Celery workers and the
ComfyUI simulator. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from books.models import Book, BookPage
from books.services import PageSpec, book_create
from tests.conftest import ROOT, attempt_history, wait_for
from workflows.models import Style

Status = BookPage.Status
pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
# Long enough for a page to render, fail validation twice (retry once) and settle.
RENDER_TIMEOUT_MS = 45_000


def _missing() -> str:
    """Why the browser tests cannot run here, or "" when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `pip install playwright==1.65.2` (no browser download needed)"
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("BOOKRENDER_REQUIRE_BROWSER"):
            pytest.fail(f"BOOKRENDER_REQUIRE_BROWSER is set, but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, and Django then refuses ORM calls
    # from it; the test's own ORM calls are ordinary blocking calls, so that guard is lifted here.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    """A fresh browser tab; the test fails if a page's script raised or logged an error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert errors == [], f"the browser reported errors: {errors}"


def sign_in(tab: Any, base_url: str, login_path: str, username: str, password: str) -> None:
    tab.goto(base_url + login_path)
    tab.fill("#id_username", username)
    tab.fill("#id_password", password)
    tab.click("button[type=submit], input[type=submit]")
    tab.wait_for_load_state()


def test_a_user_creates_a_book_watches_it_render_and_regenerates_a_failed_page(
    alice, live_server, simulator, start_worker, broker, tab
):
    from playwright.sync_api import expect

    simulator.set_faults(render_time="1.0")  # slow enough to see Pending and Rendering go by
    start_worker(COMFYUI_URLS=simulator.url, COMFY_RETRY_BACKOFF_SEC="0.2", concurrency=2)
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")

    # An empty form names what is missing, field by field.
    tab.click("text=New book")
    tab.click("#check")
    expect(tab.locator("#title-errors")).to_have_text("A book needs a title.")
    expect(tab.locator("#text-errors")).to_have_text("A book needs at least one page.")
    tab.screenshot(path=str(ARTIFACTS / "new-book-errors.png"), full_page=True)

    # Create a book whose second page the simulator refuses on every attempt.
    tab.fill("#id_title", "The Fox and the Heron")
    tab.fill(
        "#id_text",
        "A small fox reading a map under a lantern\n"
        "A heron in fog on a rope bridge [sim:validation]\n"
        "The fox asleep in a boat under a sky full of stars",
    )
    # One prompt per line is one page each, and the count shows before anything renders.
    tab.click("#check")
    expect(tab.locator("#preview h2")).to_have_text("This makes 3 pages")
    expect(tab.locator(".preview-pages li")).to_have_count(3)
    assert not Book.objects.filter(title="The Fox and the Heron").exists()
    tab.screenshot(path=str(ARTIFACTS / "new-book-preview.png"), full_page=True)
    tab.click("#confirm")
    expect(tab.locator(".messages")).to_contain_text("“The Fox and the Heron” was created: 3 pages queued.")
    book = Book.objects.get(title="The Fox and the Heron")
    expect(tab.locator("#book-live")).to_have_attribute("data-active", "true")  # still rendering
    tab.evaluate("window.notReloaded = true")  # gone if the page reloads instead of updating live

    # Badges turn Done, and page 2 turns Needs attention with its error, without a reload.
    for number in (1, 3):
        expect(tab.locator(f"#page-{number} .badge")).to_have_text("Done", timeout=RENDER_TIMEOUT_MS)
        expect(tab.locator(f"#page-{number} img")).to_be_visible()
    card = tab.locator("#page-2")
    expect(card.locator(".badge")).to_have_text("Needs attention", timeout=RENDER_TIMEOUT_MS)
    expect(card.locator(".page-error")).to_have_text("The image server could not use this page's settings.")
    expect(card.locator(".page-advice")).to_contain_text("Change the prompt, size or seed (Edit page)")
    expect(card.locator(".page-meta")).to_contain_text("Attempt 2 · 2 failed attempts")
    assert tab.evaluate("window.notReloaded") is True
    expect(tab.locator("#book-summary")).to_contain_text("2 of 3 pages done")
    card.locator("#page-2-details summary").click()
    # What ComfyUI refused is in the technical summary; its raw text (and URL) is for staff only.
    expect(card.locator("#page-2-details")).to_contain_text("[sim:validation]")
    expect(card.locator("#page-2-details pre")).to_have_count(0)
    tab.screenshot(path=str(ARTIFACTS / "status-needs-attention.png"), full_page=True)

    # The owner edits the prompt and seed; saving renders the page again, and it turns Done.
    card.get_by_role("link", name="Edit page").click()
    expect(tab.locator("#id_prompt")).to_have_value("A heron in fog on a rope bridge [sim:validation]")
    tab.fill("#id_prompt", "A heron in fog on a rope bridge")
    tab.fill("#id_seed", "1234")
    tab.screenshot(path=str(ARTIFACTS / "page-edit.png"), full_page=True)
    tab.click("#save")
    expect(tab.locator(".messages")).to_contain_text("Page 2 was changed. Page 2 queued for rendering.")
    expect(tab.locator("#page-2 .badge")).to_have_text("Done", timeout=RENDER_TIMEOUT_MS)
    image = tab.locator("#page-2 img")
    expect(image).to_be_visible()
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), timeout=10)
    expect(tab.locator("#book-summary")).to_contain_text("3 of 3 pages done")
    edited = BookPage.objects.get(book=book, number=2)
    assert edited.job_metadata["requests"][-1]["reason"] == "regenerate"
    assert edited.attempts.get(number=edited.image_attempt).seed == 1234
    tab.locator("#page-2-drawn summary").click()
    expect(tab.locator("#page-2-drawn")).to_contain_text("1234")
    tab.mouse.move(0, 0)
    tab.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

    tab.click("text=My books")
    expect(tab.locator(".books")).to_contain_text("3 / 3 done")
    tab.screenshot(path=str(ARTIFACTS / "my-books.png"), full_page=True)


def test_a_user_picks_a_style_sees_its_settings_with_their_limits_and_fixes_an_out_of_range_value(
    alice, live_server, simulator, start_worker, broker, tab
):
    from playwright.sync_api import expect

    # A second style on the built-in model-free workflow: its grain is fixed, the rest is the user's.
    version = Style.objects.get(slug="model-free").version
    Style.objects.create(
        name="Grainy sketch",
        slug="grainy",
        description="Heavy grain on every page.",
        version=version,
        overrides={"noise": 0.8},
        position=50,
    )
    start_worker(COMFYUI_URLS=simulator.url)
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(live_server.url + "/books/new")

    # The first style is chosen and only its settings show; choosing another shows its own.
    expect(tab.locator("#style-model-free")).to_be_checked()
    expect(tab.locator("#settings-model-free")).to_be_visible()
    expect(tab.locator("#settings-grainy")).to_be_hidden()
    tab.click("#style-grainy")
    expect(tab.locator("#settings-grainy")).to_be_visible()
    expect(tab.locator("#settings-model-free")).to_be_hidden()
    width = tab.locator("#id_grainy__width")
    assert (width.get_attribute("type"), width.get_attribute("min"), width.get_attribute("max")) == (
        "number",
        "16",
        "4096",
    )
    expect(width).to_have_value("768")
    expect(tab.locator("#id_grainy__noise")).to_have_count(0)  # fixed by the style: not a field
    expect(tab.locator("#settings-grainy")).to_contain_text("A whole number from 16 to 4096.")

    # An out-of-range width is refused by name, and the choice and the text stay.
    tab.fill("#id_title", "Grainy harbour")
    tab.fill("#id_text", "A harbour at dawn")
    width.fill("9999")
    tab.fill("#id_grainy__height", "48")
    tab.click("#check")
    expect(tab.locator("#grainy__width-errors")).to_have_text(
        "Width (px) is 9999: it must be a whole number from 16 to 4096."
    )
    expect(tab.locator("#style-grainy")).to_be_checked()
    expect(tab.locator("#settings-grainy")).to_be_visible()
    expect(tab.locator("#id_text")).to_have_value("A harbour at dawn")
    tab.screenshot(path=str(ARTIFACTS / "new-book-style-error.png"), full_page=True)
    assert not Book.objects.filter(title="Grainy harbour").exists()

    # Fixed, the book is created with the style and values, and renders on the simulator.
    tab.locator("#id_grainy__width").fill("64")
    tab.click("#check")
    expect(tab.locator("#preview h2")).to_have_text("This makes 1 page")
    tab.screenshot(path=str(ARTIFACTS / "new-book-style-preview.png"), full_page=True)
    tab.click("#confirm")
    expect(tab.locator("#page-1 .badge")).to_have_text("Done", timeout=RENDER_TIMEOUT_MS)
    expect(tab.locator(".page-head .subtitle")).to_contain_text("Grainy sketch")
    book = Book.objects.get(title="Grainy harbour")
    assert (book.style.slug, book.workflow_version_id) == ("grainy", version.pk)
    assert book.values == {"seed": None, "width": 64, "height": 48, "noise": 0.8}
    page = book.pages.get()
    with Image.open(page.image.open("rb")) as image:
        assert image.size == (64, 48)
    assert page.attempts.get(number=page.image_attempt).workflow == "model-free v1"


def test_an_admin_reruns_a_done_page_from_the_admin(
    alice, admin_user, live_server, simulator, start_worker, broker, tab
):
    from playwright.sync_api import expect

    start_worker(COMFYUI_URLS=simulator.url, COMFY_RETRY_BACKOFF_SEC="0.2")
    book = book_create(
        owner=alice,
        title="The Lighthouse",
        style="model-free",
        pages=[PageSpec("A lighthouse on a cliff at dawn, watercolour"), PageSpec("A sailor [sim:validation]")],
    )
    wait_for(lambda: book.pages.filter(status__in=[Status.DONE, Status.FAILED]).count() == 2, timeout=30)
    page, failed = book.pages.get(number=1), book.pages.get(number=2)
    sign_in(tab, live_server.url, "/admin/login/", "root", "root-password")

    # Support sees why a page failed without reading logs: every attempt, its error and telemetry.
    tab.goto(f"{live_server.url}/admin/books/bookpage/{failed.pk}/change/")
    expect(tab.locator(".field-status_badge .badge")).to_have_text("Needs attention")
    expect(tab.locator(".page-error-entry")).to_have_count(2)
    expect(tab.locator(".page-error-entry").first).to_contain_text("ComfyUI refused the workflow")
    expect(tab.locator("#attempts-group tbody tr.has_original")).to_have_count(2)
    expect(tab.locator("#attempts-group")).to_contain_text("[sim:validation] marker")
    tab.screenshot(path=str(ARTIFACTS / "admin-failed-page.png"), full_page=True)

    tab.goto(f"{live_server.url}/admin/books/bookpage/{page.pk}/change/")
    expect(tab.locator(".field-status_badge .badge")).to_have_text("Done")
    tab.click("#rerun-page")
    expect(tab.locator(".messagelist")).to_contain_text("Page 1 of “The Lighthouse” was queued again (attempt 2).")

    wait_for(lambda: BookPage.objects.get(pk=page.pk).image_attempt == 2, timeout=30)
    tab.reload()
    expect(tab.locator(".field-status_badge .badge")).to_have_text("Done")
    expect(tab.locator("#attempts-group tbody tr.has_original")).to_have_count(2)
    request = BookPage.objects.get(pk=page.pk).job_metadata["requests"][-1]
    assert request["by"] == f"admin:{admin_user.pk}" and request["reason"] == "admin_rerun"
    tab.screenshot(path=str(ARTIFACTS / "admin-page.png"), full_page=True)

    # The same live status view as the owner's, inside the admin.
    tab.goto(f"{live_server.url}/admin/books/book/{book.pk}/status/")
    expect(tab.locator("#page-1 .badge")).to_have_text("Done")
    expect(tab.locator("#page-1 .page-meta")).to_contain_text("Attempt 2")
    expect(tab.locator("#page-2 .badge")).to_have_text("Needs attention")
    tab.screenshot(path=str(ARTIFACTS / "admin-status.png"), full_page=True)


def test_the_status_page_works_without_javascript(alice, live_server, broker, browser):
    from playwright.sync_api import expect

    book = book_create(owner=alice, title="Plain", style="model-free", pages=[PageSpec("A quiet lake")])
    BookPage.objects.filter(book=book).update(
        status=Status.FAILED,
        needs_regeneration=True,
        image_error=[
            {"attempt": 1, "kind": "oom", "message": "out of memory", "node_id": "3", "node_type": "KSampler"}
        ],
    )
    context = browser.new_context(java_script_enabled=False)
    tab = context.new_page()
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    expect(tab.locator("#page-1 .badge")).to_have_text("Needs attention")
    expect(tab.locator("#page-1 .page-error")).to_have_text(
        "The graphics card ran out of memory while drawing this page."
    )

    tab.click("#retry-failed")

    expect(tab.locator(".messages")).to_have_text("Page 1 queued for rendering.")
    expect(tab.locator("#page-1 .badge")).to_have_text("Pending")
    # Without JavaScript, a <noscript> refresh keeps the page current while pages render.
    assert tab.locator("head noscript").count() == 1
    context.close()


def test_a_page_waiting_to_retry_counts_down_and_shows_its_error(alice, live_server, broker, tab):
    """No worker runs: the page stays in backoff, as page_fail left it, while the card counts down."""
    import re
    from datetime import timedelta

    from django.utils import timezone
    from playwright.sync_api import expect

    book = book_create(owner=alice, title="Waiting", style="model-free", pages=[PageSpec("A lake"), PageSpec("A hill")])
    now = timezone.now()
    error = {"attempt": 2, "kind": "unavailable", "message": "cannot reach ComfyUI", "at": now.isoformat()}
    BookPage.objects.filter(book=book, number=1).update(
        attempt=3,
        retry_count=2,
        image_error=[{**error, "attempt": 1}, error],
        next_attempt_at=now + timedelta(minutes=5),
        job_metadata={"run": {"attempt": 1, "retry_base": 0, "at": (now - timedelta(minutes=1)).isoformat()}},
    )
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    card = tab.locator("#page-1")
    countdown = card.locator("[data-countdown-until]")
    expect(countdown).to_have_text(re.compile(r"^Retrying in \d+ s \(attempt 3 of 4\)$"))
    expect(card.locator(".page-error")).to_have_text(
        "The image server could not be reached, or lost the page while drawing it."
    )
    expect(card.locator(".page-advice")).to_contain_text("bookrender tries again by itself")
    expect(tab.locator("#page-2 .wait-text")).to_have_text("Waiting for a free GPU")
    # The script counts down from the stored time between refreshes.
    first = int(re.findall(r"\d+", countdown.inner_text())[0])
    wait_for(lambda: int(re.findall(r"\d+", countdown.inner_text())[0]) < first, timeout=10)
    tab.screenshot(path=str(ARTIFACTS / "status-retry-countdown.png"), full_page=True)


def test_an_owner_looks_at_the_gallery_and_takes_the_book_away(alice, live_server, start_worker, broker, tab, tmp_path):
    import zipfile

    from playwright.sync_api import expect

    from comfysim.testing import running_simulator

    with running_simulator(output_dir=tmp_path / "out", args=["--draw-prompt", "--render-time", "0.2"]) as sim:
        start_worker(COMFYUI_URLS=sim.url, COMFY_RETRY_BACKOFF_SEC="0.2")
        prompts = [
            "A red fox reading a map",
            "A heron in fog",
            "A boat under stars",
            "A lighthouse at dawn [sim:validation]",
        ]
        book = book_create(owner=alice, title="Take Away", style="model-free", pages=[PageSpec(p) for p in prompts])
        wait_for(lambda: book.pages.filter(status__in=[Status.DONE, Status.FAILED]).count() == 4, timeout=40)
    for page in book.pages.filter(number__in=(1, 2, 3)):  # each drawn at its first attempt
        assert page.image_attempt == 1, attempt_history(page)
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    for number in (1, 2, 3):
        image = tab.locator(f"#page-{number} img")
        expect(image).to_have_attribute("src", f"/books/{book.pk}/pages/{number}/thumb?v=1")
        wait_for(lambda image=image: image.evaluate("img => img.complete && img.naturalWidth === 480"), timeout=10)
    tab.screenshot(path=str(ARTIFACTS / "status-thumbnails.png"), full_page=True)

    # The status filter.
    tab.click("#filter-failed")
    expect(tab.locator(".page-card")).to_have_count(1)
    expect(tab.locator(".page-card")).to_have_attribute("id", "page-4")
    tab.click("#filter-done")
    expect(tab.locator(".page-card")).to_have_count(3)

    # The gallery and its lightbox: next, zoom, the keyboard, close.
    tab.click("text=Gallery")
    expect(tab.locator(".gallery li")).to_have_count(3)
    tab.click("#gallery-1")
    expect(tab.locator("#lightbox")).to_contain_text("Page 1")
    tab.click("#lightbox-next")
    expect(tab.locator("#lightbox")).to_contain_text("Page 2")
    wait_for(lambda: tab.locator(".lightbox-image img").evaluate("img => img.naturalWidth === 768"), timeout=10)
    tab.screenshot(path=str(ARTIFACTS / "gallery-lightbox.png"))
    tab.click("#lightbox-zoom")
    expect(tab.locator("#lightbox")).to_have_class("lightbox is-zoomed")
    tab.keyboard.press("ArrowLeft")
    expect(tab.locator("#lightbox")).to_contain_text("Page 1")
    tab.keyboard.press("Escape")
    expect(tab.locator("#lightbox")).to_have_count(0)

    # Both downloads, in page order.
    with tab.expect_download() as download:
        tab.click("text=Download ZIP")
    assert zipfile.ZipFile(download.value.path()).namelist() == ["page-001.png", "page-002.png", "page-003.png"]
    with tab.expect_download() as download:
        tab.click("text=Download PDF")
    pdf = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == "take-away.pdf" and pdf.startswith(b"%PDF")


def test_a_stale_tabs_button_leads_back_to_a_working_button(alice, live_server, broker, browser):
    from playwright.sync_api import expect

    # Its own tab: the 403 is the point here, and Chromium logs every 403 as a console error.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    book = book_create(owner=alice, title="Stale", style="model-free", pages=[PageSpec("A lake")])
    BookPage.objects.filter(book=book).update(status=Status.FAILED, needs_regeneration=True)
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    tab.context.clear_cookies(name="csrftoken")  # what a long-open tab meets after the token rotated
    tab.click("#retry-failed")
    expect(tab.locator("#csrf-failure")).to_contain_text("Nothing was changed.")
    tab.screenshot(path=str(ARTIFACTS / "csrf-failure.png"), full_page=True)
    assert BookPage.objects.get(book=book).status == Status.FAILED
    tab.click("#csrf-back")
    tab.click("#retry-failed")
    expect(tab.locator(".messages")).to_have_text("Page 1 queued for rendering.")
    context.close()


def test_a_long_title_wraps_on_a_phone_and_in_the_admin(alice, admin_user, live_server, broker, browser):
    # One unbroken word is the hard case: nothing to wrap at but the characters themselves.
    title = "TheExtraordinarilyLongChronicleOfTheFoxWhoMappedEveryLighthouse" * 3
    book = book_create(owner=alice, title=title, style="model-free", pages=[PageSpec("A lake")])
    phone = browser.new_context(viewport={"width": 390, "height": 844})
    tab = phone.new_page()
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")
    for path in ("/books/", f"/books/{book.pk}/"):
        tab.goto(live_server.url + path)
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390, path
    tab.screenshot(path=str(ARTIFACTS / "phone-long-title.png"), full_page=True)
    phone.close()

    desktop = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = desktop.new_page()
    sign_in(tab, live_server.url, "/admin/login/", "root", "root-password")
    tab.goto(f"{live_server.url}/admin/books/book/")
    assert tab.evaluate("document.documentElement.scrollWidth") <= 1280
    tab.screenshot(path=str(ARTIFACTS / "admin-long-title.png"), full_page=True)
    desktop.close()


def test_an_owner_stops_a_book_picks_a_version_and_keeps_it_through_a_failed_regenerate(
    alice, live_server, simulator, start_worker, broker, tab
):
    from playwright.sync_api import expect

    tab.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" of Stop rendering, Regenerate
    sign_in(tab, live_server.url, "/accounts/login/", "alice", "alice-password")

    # No worker yet: the pages stay pending. Stop one page, then the rest of the book.
    stop = book_create(
        owner=alice, title="Stop Me", style="model-free", pages=[PageSpec(f"Mile {n}") for n in (1, 2, 3)]
    )
    tab.goto(f"{live_server.url}/books/{stop.pk}/")
    tab.locator("#page-3").get_by_role("button", name="Stop page").click()
    expect(tab.locator(".messages")).to_contain_text("Stopped 1 page: they will not be drawn.")
    expect(tab.locator("#page-3 .badge")).to_have_text("Cancelled")
    expect(tab.locator("#page-1 .badge")).to_have_text("Pending")
    tab.click("#stop-book")
    expect(tab.locator(".messages")).to_contain_text("Stopped 2 pages")
    for number in (1, 2, 3):
        expect(tab.locator(f"#page-{number} .badge")).to_have_text("Cancelled")
    expect(tab.locator("#stop-book")).to_have_count(0)
    assert set(stop.pages.values_list("status", flat=True)) == {Status.CANCELLED}
    tab.screenshot(path=str(ARTIFACTS / "status-stopped.png"), full_page=True)

    # Versions: a regenerate adds one, and one click shows the earlier one again.
    simulator.set_faults(render_time="0.3")
    start_worker(COMFYUI_URLS=simulator.url, COMFY_RETRY_BACKOFF_SEC="0.2")
    book = book_create(owner=alice, title="Versions", style="model-free", pages=[PageSpec("A red fox")])
    wait_for(lambda: book.pages.get().status == Status.DONE, timeout=RENDER_TIMEOUT_MS / 1000)
    tab.goto(f"{live_server.url}/books/{book.pk}/")
    card = tab.locator("#page-1")
    card.get_by_role("button", name="Regenerate page").click()
    expect(tab.locator(".messages")).to_contain_text("Page 1 queued for rendering.")
    expect(card.locator(".version.is-chosen")).to_have_text("attempt 2 (shown)", timeout=RENDER_TIMEOUT_MS)
    card.get_by_role("button", name="Use attempt 1").click()
    expect(tab.locator(".messages")).to_contain_text("Page 1 now shows its image from attempt 1.")
    expect(card.locator(".version.is-chosen")).to_have_text("attempt 1 (shown)")
    expect(card.locator("img")).to_have_attribute("src", f"/books/{book.pk}/pages/1/thumb?v=1")
    tab.screenshot(path=str(ARTIFACTS / "status-versions.png"), full_page=True)

    # A regenerate that fails (ComfyUI refuses every attempt) leaves the chosen image on the card.
    simulator.set_faults(validation={"rate": 1.0})
    card.get_by_role("button", name="Regenerate page").click()
    expect(card.locator(".badge")).to_have_text("Needs attention", timeout=RENDER_TIMEOUT_MS)
    expect(card.locator("img")).to_have_attribute("src", f"/books/{book.pk}/pages/1/thumb?v=1")
    image = card.locator("img")
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), timeout=10)
    expect(card.locator(".page-note")).to_contain_text("The image shown is the page's chosen version")
    assert BookPage.objects.get(book=book).image_attempt == 1
    tab.screenshot(path=str(ARTIFACTS / "status-failed-regenerate.png"), full_page=True)
