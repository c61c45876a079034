"""The pages people use, the regenerate endpoint and its JSON twin, and the admin: who may do what,
what bad input gets back, and what is recorded."""

from __future__ import annotations

import io
import json

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from books.models import Book, BookPage
from books.services import MAX_PAGES, REGENERATE_LIMIT
from books.signin import SIGNIN_FAILURES_LIMIT
from renders.models import RenderAttempt
from tests.books.conftest import OOM_ERROR, client_for, page_set
from tests.conftest import builtin_style

Status = BookPage.Status
pytestmark = pytest.mark.django_db


def regenerate_json(client: Client, book: Book, pages: list[int] | None = None, **extra):
    body = {} if pages is None else {"pages": pages}
    return client.post(f"/books/{book.pk}/regenerate", json.dumps(body), content_type="application/json", **extra)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def attempts(book: Book) -> dict[int, int]:
    return dict(book.pages.values_list("number", "attempt"))


# --- who may see and do what -------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/books/{id}/"),
        ("get", "/books/{id}/pages"),
        ("get", "/books/{id}/pages/1/image"),
        ("get", "/api/books/{id}"),
        ("post", "/books/{id}/regenerate"),
    ],
)
def test_it_answers_404_to_other_users_on_every_endpoint(bob_client, book, method, path):
    page_set(book, 1, Status.DONE, image="pages/x.png", image_attempt=1)
    response = getattr(bob_client, method)(path.format(id=book.pk))
    assert response.status_code == 404


def test_it_answers_404_to_a_json_regenerate_of_another_users_book(bob_client, book):
    page_set(book, 2, Status.FAILED)
    assert regenerate_json(bob_client, book, [2]).status_code == 404
    assert book.pages.get(number=2).status == Status.FAILED


def test_staff_without_the_view_permission_see_only_their_own_books(book):
    staff = User.objects.create_user("intern", password="intern-password", is_staff=True)
    page_set(book, 1, Status.DONE, image="pages/x.png", image_attempt=1)
    for path in ("/books/{id}/", "/books/{id}/pages", "/books/{id}/pages/1/image", "/api/books/{id}"):
        assert client_for(staff).get(path.format(id=book.pk)).status_code == 404, path


def test_support_with_the_view_permission_may_watch_any_book(helpdesk, book):
    assert client_for(helpdesk).get(f"/api/books/{book.pk}").status_code == 200


def test_staff_may_watch_any_book_but_not_regenerate_it_as_its_owner(root_client, book):
    page_set(book, 2, Status.FAILED)
    assert root_client.get(f"/books/{book.pk}/").status_code == 200
    assert root_client.post(f"/books/{book.pk}/regenerate").status_code == 404
    assert book.pages.get(number=2).status == Status.FAILED


@pytest.mark.parametrize("path", ["/books/", "/books/new", "/books/{id}/", "/books/{id}/pages"])
def test_it_sends_anonymous_people_to_sign_in(client, book, path):
    response = client.get(path.format(id=book.pk))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_it_answers_401_to_anonymous_scripts(client, book):
    assert client.get(f"/api/books/{book.pk}").status_code == 401
    response = regenerate_json(client, book, [1])
    assert response.status_code == 401
    assert response.json() == {"error": "Sign in first."}


def test_an_anonymous_regenerate_form_is_sent_to_sign_in_and_queues_nothing(client, book):
    page_set(book, 2, Status.FAILED)
    response = client.post(f"/books/{book.pk}/regenerate")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert book.pages.get(number=2).status == Status.FAILED


def test_it_refuses_a_regenerate_without_a_csrf_token(alice, book):
    page_set(book, 2, Status.FAILED)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(f"/books/{book.pk}/regenerate").status_code == 403
    assert regenerate_json(client, book, [2]).status_code == 403
    assert book.pages.get(number=2).status == Status.FAILED


def test_a_regenerate_with_the_csrf_token_goes_through(alice, book):
    page_set(book, 2, Status.FAILED)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get(f"/books/{book.pk}/")
    token = client.cookies["csrftoken"].value
    response = regenerate_json(client, book, [2], HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert response.json()["queued"] == [2]


# --- regenerate ----------------------------------------------------------------------------------


def test_retry_all_failed_pages_queues_only_the_failed_ones(alice_client, book):
    page_set(book, 1, Status.DONE)
    page_set(book, 2, Status.FAILED)
    page_set(book, 3, Status.FAILED)

    response = alice_client.post(f"/books/{book.pk}/regenerate", follow=True)

    assert response.redirect_chain == [(f"/books/{book.pk}/", 302)]
    assert messages_of(response) == ["Pages 2 and 3 queued for rendering."]
    statuses = dict(book.pages.values_list("number", "status"))
    assert statuses == {1: Status.DONE, 2: Status.QUEUED, 3: Status.QUEUED}
    assert attempts(book) == {1: 1, 2: 3, 3: 3}
    assert not book.pages.filter(needs_regeneration=True).exists()


def test_it_says_so_when_no_page_needs_attention(alice_client, book):
    page_set(book, 1, Status.DONE)
    response = alice_client.post(f"/books/{book.pk}/regenerate", follow=True)
    assert messages_of(response) == ["No page needs attention, so nothing was queued."]
    response = regenerate_json(alice_client, book)
    assert response.json() == {
        "queued": [],
        "skipped": {},
        "message": "No page needs attention, so nothing was queued.",
    }


def test_regenerate_page_on_a_card_queues_that_page_even_when_done(alice_client, book):
    page_set(book, 1, Status.DONE, image_attempt=1)
    response = alice_client.post(f"/books/{book.pk}/regenerate", {"page": "1"}, follow=True)
    assert messages_of(response) == ["Page 1 queued for rendering."]
    page = book.pages.get(number=1)
    assert page.status == Status.QUEUED and page.attempt == 2


def test_it_answers_json_with_what_was_queued_and_what_was_skipped_and_why(alice_client, book):
    page_set(book, 1, Status.DONE)
    page_set(book, 2, Status.RENDERING)

    response = regenerate_json(alice_client, book, [1, 2, 3])

    assert response.status_code == 200
    assert response.json() == {
        "queued": [1],
        "skipped": {"2": "already rendering", "3": "already pending"},
        "message": "Page 1 queued for rendering. Not queued: page 2 already rendering; page 3 already pending.",
    }


def test_a_page_already_rendering_is_not_queued_twice(alice_client, book):
    page_set(book, 2, Status.RENDERING)
    before = attempts(book)
    response = alice_client.post(f"/books/{book.pk}/regenerate", {"page": "2"}, follow=True)
    assert messages_of(response) == ["Not queued: page 2 already rendering."]
    assert attempts(book) == before
    assert book.pages.get(number=2).status == Status.RENDERING


def test_the_json_answer_follows_the_accept_header_too(alice_client, book):
    page_set(book, 2, Status.FAILED)
    response = alice_client.post(f"/books/{book.pk}/regenerate", {"page": "2"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["queued"] == [2]


def test_pages_that_do_not_exist_are_refused_and_nothing_is_queued(alice_client, book):
    page_set(book, 2, Status.FAILED)

    response = regenerate_json(alice_client, book, [2, 99, 0])

    assert response.status_code == 400
    assert response.json() == {"error": "Pages 0 and 99 do not exist: “The Fox” has pages 1 to 3."}
    assert book.pages.get(number=2).status == Status.FAILED
    response = alice_client.post(f"/books/{book.pk}/regenerate", {"page": "7"}, follow=True)
    assert messages_of(response) == ["Page 7 does not exist: “The Fox” has pages 1 to 3."]


@pytest.mark.parametrize(
    "body, error",
    [
        ('{"pages": "3"}', '"pages" must be a list of page numbers, like [3, 5].'),
        ('{"pages": [1.5]}', '"pages" must be a list of page numbers, like [3, 5].'),
        ('{"pages": [true]}', '"pages" must be a list of page numbers, like [3, 5].'),
        ("{not json", 'The request body is not valid JSON; send {"pages": [3, 5]}.'),
    ],
)
def test_malformed_page_lists_are_refused_with_a_clear_message(alice_client, book, body, error):
    response = alice_client.post(f"/books/{book.pk}/regenerate", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_a_form_page_number_that_is_not_a_number_is_refused(alice_client, book):
    response = alice_client.post(f"/books/{book.pk}/regenerate", {"page": "three"}, follow=True)
    assert messages_of(response) == ["Page numbers must be whole numbers."]


def test_regenerate_only_answers_post(alice_client, book):
    assert alice_client.get(f"/books/{book.pk}/regenerate").status_code == 405


def test_it_records_who_asked_and_when_in_job_metadata(alice, alice_client, book):
    page_set(book, 2, Status.FAILED)
    with time_machine.travel("2026-03-01 12:00:00+00:00", tick=False):
        regenerate_json(alice_client, book, [2])
    requests = book.pages.get(number=2).job_metadata["requests"]
    assert requests == [
        {"by": f"user:{alice.pk}", "reason": "regenerate", "at": "2026-03-01T12:00:00+00:00", "attempt": 3}
    ]


def test_too_many_regenerate_requests_get_429_with_the_wait(alice_client, book):
    with time_machine.travel("2026-03-01 12:00:15+00:00", tick=False) as clock:
        for _ in range(REGENERATE_LIMIT):
            assert regenerate_json(alice_client, book).status_code == 200

        response = regenerate_json(alice_client, book)

        assert response.status_code == 429
        assert response.json() == {"error": "Too many regenerate requests: try again in 45 s.", "retry_after": 45}
        assert response["Retry-After"] == "45"
        response = alice_client.post(f"/books/{book.pk}/regenerate", follow=True)
        assert messages_of(response) == ["Too many regenerate requests: try again in 45 s."]

        clock.shift(45)
        assert regenerate_json(alice_client, book).status_code == 200


def test_the_rate_limit_is_per_user(alice_client, bob, book):
    other = Book.objects.create(owner=bob, title="Bob's", **builtin_style())
    with time_machine.travel("2026-03-01 12:00:00+00:00", tick=False):
        for _ in range(REGENERATE_LIMIT + 1):
            regenerate_json(alice_client, book)
        assert regenerate_json(client_for(bob), other).status_code == 200


# --- the status page, the live partial and the JSON twin ---------------------------------------


def test_my_books_shows_progress_and_pages_needing_attention(alice_client, book, bob):
    Book.objects.create(owner=bob, title="Not alice's", **builtin_style())
    page_set(book, 1, Status.DONE)
    page_set(book, 2, Status.FAILED)

    response = alice_client.get("/books/")

    html = response.content.decode()
    assert response.status_code == 200
    assert "The Fox" in html and "Not alice" not in html
    assert "1 / 3 done" in html
    assert '<span class="badge badge-failed">1 page</span>' in html


def test_the_status_page_shows_a_card_per_page_with_badge_attempts_and_error_in_plain_words(alice_client, book):
    page_set(book, 1, Status.DONE, image="pages/p1.png", image_attempt=1)
    page_set(book, 2, Status.FAILED)
    page_set(book, 3, Status.RENDERING)

    response = alice_client.get(f"/books/{book.pk}/")

    html = response.content.decode()
    assert [(p["page"].number, p["page"].get_status_display()) for p in response.context["pages"]] == [
        (1, "Done"),
        (2, "Needs attention"),
        (3, "Rendering"),
    ]
    assert f'src="/books/{book.pk}/pages/1/thumb?v=1"' in html
    assert "The graphics card ran out of memory while drawing this page." in html
    assert "Usually temporary: regenerate the page." in html  # advice, once bookrender gave up
    assert "<summary>Technical details</summary>" in html
    assert "ComfyUI ran out of GPU memory on node 12 (KSampler)" in html  # folded, for support
    # The owner is not staff: no ComfyUI URLs and no raw exception text.
    assert "torch.OutOfMemoryError" not in html and "127.0.0.1:8188" not in html
    assert "Allocation on device" not in html
    assert "Attempt 2 · 1 failed attempt" in html
    assert 'id="retry-failed"' in html
    assert 'data-active="true"' in html
    assert '<noscript><meta http-equiv="refresh"' in html  # still live without JavaScript


def test_the_live_partial_is_the_cards_and_says_when_to_stop_polling(alice_client, book):
    for number in (1, 2, 3):
        page_set(book, number, Status.DONE)
    response = alice_client.get(f"/books/{book.pk}/pages")
    html = response.content.decode()
    assert response["Cache-Control"] == "no-store"
    assert html.lstrip().startswith('<section id="book-live"')
    assert 'data-active="false"' in html
    assert html.count('<li class="page-card') == 3
    assert "<html" not in html


def test_the_api_gives_status_counts_and_errors_per_page(alice_client, book):
    page_set(book, 2, Status.FAILED)
    data = alice_client.get(f"/api/books/{book.pk}").json()
    assert data["counts"] == {"queued": 2, "rendering": 0, "done": 0, "failed": 1, "cancelled": 0, "total": 3}
    assert data["regenerate_url"] == f"/books/{book.pk}/regenerate"
    page = data["pages"][1]
    assert page["badge"] == "Needs attention"
    assert page["error"] == "The graphics card ran out of memory while drawing this page."
    assert page["advice"].startswith("Usually temporary")
    public = {
        "attempt": 2,
        "kind": "oom",
        "node_id": "12",
        "node_type": "KSampler",
        "at": "2026-01-01T10:00:00+00:00",
        "text": "The graphics card ran out of memory while drawing this page.",
        "details": "ComfyUI ran out of GPU memory on node 12 (KSampler)",
    }
    assert page["latest_error"] == public and page["errors"] == [public]


def test_staff_see_the_internals_of_an_error_and_owners_do_not(alice_client, root_client, book):
    unreachable = {
        "attempt": 1,
        "kind": "unavailable",
        "message": "ComfyUI at http://127.0.0.1:8189 could not be reached: ConnectionRefusedError",
        "exception_type": "requests.ConnectionError",
        "instance": "http://127.0.0.1:8189",
        "at": "2026-01-01T10:00:00+00:00",
    }
    page_set(book, 2, Status.FAILED, image_error=[unreachable, {**unreachable, "attempt": 2}])
    for path in (f"/books/{book.pk}/", f"/books/{book.pk}/pages", f"/api/books/{book.pk}"):
        seen_by_owner = alice_client.get(path).content.decode()
        assert "could not be reached" in seen_by_owner, path  # the meaning stays
        assert "8189" not in seen_by_owner and "ConnectionRefusedError" not in seen_by_owner, path
        seen_by_staff = root_client.get(path).content.decode()
        assert "http://127.0.0.1:8189" in seen_by_staff and "ConnectionRefusedError" in seen_by_staff, path


def test_a_page_without_an_image_has_no_image_to_serve(alice_client, book):
    assert alice_client.get(f"/books/{book.pk}/pages/1/image").status_code == 404
    assert alice_client.get(f"/books/{book.pk}/pages/9/image").status_code == 404


# --- the New book form --------------------------------------------------------------------------


def new_book(client: Client, **data):
    return client.post("/books/new", {"title": "The Heron", "style": "model-free", **data})


def create_book(client: Client, **data):
    """What a person does: submit the form, read the page count, press "Create" (the browser sends
    the kept file back, not the file input, which it cleared)."""
    preview = new_book(client, **data)
    form = preview.context["form"]
    assert preview.status_code == 200 and preview.context["preview"], form.errors
    again = {key: value for key, value in data.items() if key != "upload"}
    if form.kept_text:
        again.update(kept_upload=form.kept_text, kept_upload_name=form.kept_name)
    return new_book(client, **again, confirm="1", expected_pages=str(len(preview.context["preview"])))


def test_a_user_creates_a_book_with_one_page_per_paragraph(alice, alice_client):
    response = create_book(alice_client, text="A heron at dawn.\n\nA heron in the reeds,\nlooking up.\n\n")
    book = Book.objects.get(owner=alice, title="The Heron")
    assert response.status_code == 302 and response["Location"] == f"/books/{book.pk}/"
    assert list(book.pages.values_list("number", "prompt", "status")) == [
        (1, "A heron at dawn.", Status.QUEUED),
        (2, "A heron in the reeds, looking up.", Status.QUEUED),
    ]


def test_too_many_new_books_in_an_hour_are_refused_and_the_form_keeps_the_pages(alice, alice_client, bob, settings):
    settings.BOOKRENDER_NEW_BOOKS_PER_HOUR = 3
    with time_machine.travel("2026-03-01 12:00:00+00:00", tick=False) as clock:
        for _ in range(3):
            assert create_book(alice_client, text="A heron at dawn.").status_code == 302

        response = create_book(alice_client, text="One heron too many.")

        assert response.status_code == 429
        html = response.content.decode()
        assert "Too many new books: try again in 3600 s." in html and "One heron too many." in html
        assert Book.objects.filter(owner=alice).count() == 3
        assert create_book(client_for(bob), text="Bob's heron.").status_code == 302  # per user
        clock.shift(3600)
        assert create_book(alice_client, text="A heron, an hour later.").status_code == 302


def test_without_a_limit_on_new_books_none_is_refused(alice_client, settings):
    settings.BOOKRENDER_NEW_BOOKS_PER_HOUR = 0  # the load test's single user
    for _ in range(25):
        assert create_book(alice_client, text="A heron at dawn.").status_code == 302


def test_a_preview_counts_no_new_book(alice_client, settings):
    settings.BOOKRENDER_NEW_BOOKS_PER_HOUR = 1
    for _ in range(3):
        assert new_book(alice_client, text="A heron at dawn.").status_code == 200  # previews only
    assert create_book(alice_client, text="A heron at dawn.").status_code == 302


def test_a_user_creates_a_book_from_a_json_upload(alice, alice_client):
    upload = SimpleUploadedFile(
        "pages.json", json.dumps({"pages": ["A heron", {"prompt": "A fox", "width": 512}]}).encode()
    )
    response = create_book(alice_client, upload=upload)
    book = Book.objects.get(owner=alice, title="The Heron")
    assert response.status_code == 302
    assert book.pages.get(number=2).overrides == {"width": 512}


def test_the_form_names_each_problem_by_field(alice_client):
    response = alice_client.post("/books/new", {"title": "", "style": "nope", "text": ""})
    form = response.context["form"]
    assert form.errors == {
        "title": ["A book needs a title."],
        "style": ["There is no style 'nope'."],
        "text": ["A book needs at least one page."],
    }
    assert not Book.objects.exists()


def test_the_form_names_each_bad_page(alice_client):
    upload = SimpleUploadedFile("pages.json", json.dumps(["ok", 5, {"prompt": "x", "width": 9}, "  "]).encode())
    response = new_book(alice_client, upload=upload)
    form = response.context["form"]
    assert form.errors["upload"] == ["3 pages need fixing:"]
    assert form.page_errors == {
        "page 2": "Expected a prompt string or an object with a 'prompt'.",
        "page 3": "Width (px) is 9: it must be a whole number from 16 to 4096.",
        "page 4": "The prompt is empty.",
    }
    assert "Page 2: Expected a prompt string" in response.content.decode()


def test_an_empty_prompt_in_a_json_upload_is_named_by_page(alice_client):
    upload = SimpleUploadedFile("pages.json", json.dumps(["ok", "  "]).encode())
    form = new_book(alice_client, upload=upload).context["form"]
    assert form.page_errors == {"page 2": "The prompt is empty."}
    assert not Book.objects.exists()


def test_a_malformed_json_upload_is_refused_with_a_clear_message(alice_client):
    upload = SimpleUploadedFile("pages.json", b'["a fox",\n "a heron"')
    response = new_book(alice_client, upload=upload)
    assert response.context["form"].errors["upload"] == [
        "The file is not valid JSON: Expecting ',' delimiter at line 2, column 11."
    ]
    upload = SimpleUploadedFile("pages.json", b"\xff\xfe\x00garbage")
    assert new_book(alice_client, upload=upload).context["form"].errors["upload"] == [
        "The file is not text: upload a UTF-8 JSON file."
    ]
    upload = SimpleUploadedFile("pages.json", b'{"title": "no pages"}')
    assert new_book(alice_client, upload=upload).context["form"].errors["upload"] == [
        "Expected a list of pages, or an object with a 'pages' list."
    ]
    assert not Book.objects.exists()


def test_a_ten_thousand_page_upload_is_refused_with_the_limit(alice_client):
    upload = SimpleUploadedFile("pages.json", json.dumps([f"page {n}" for n in range(10_000)]).encode())
    response = new_book(alice_client, upload=upload)
    assert response.context["form"].errors["upload"] == [f"10000 pages is more than the limit of {MAX_PAGES} per book."]
    response = new_book(alice_client, text="\n\n".join(f"page {n}" for n in range(10_000)))
    assert response.context["form"].errors["text"] == [f"10000 pages is more than the limit of {MAX_PAGES} per book."]
    assert not Book.objects.exists() and not BookPage.objects.exists()


def test_text_and_a_file_together_are_refused(alice_client):
    upload = SimpleUploadedFile("pages.json", b'["a fox"]')
    response = new_book(alice_client, text="A heron", upload=upload)
    assert response.context["form"].errors["upload"] == ["Give the pages as text or as a JSON file, not both."]


def test_the_new_book_page_offers_the_styles(alice_client):
    html = alice_client.get("/books/new").content.decode()
    assert 'name="style" value="model-free" id="style-model-free" checked' in html
    assert 'name="style" value="sdxl" id="style-sdxl">' in html
    # The picker's script is in the page, not in its title (where a browser shows it as text).
    assert "<title>New book · bookrender</title>" in html and html.count("style-picker") >= 2


# --- accounts ---------------------------------------------------------------------------------------


def test_the_demo_user_of_make_run_can_sign_in_and_out(client):
    call_command("seed_demo", stdout=io.StringIO())
    response = client.post("/accounts/login/", {"username": "demo", "password": "demo-password"}, follow=True)
    assert response.redirect_chain == [("/books/", 302)]
    assert "The Fox and the Lighthouse" in response.content.decode()
    response = client.post("/accounts/logout/", follow=True)
    assert response.redirect_chain[-1][0] == "/accounts/login/"
    assert client.get("/books/").status_code == 302


def test_a_wrong_password_is_refused(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


@pytest.mark.parametrize("login_url", ["/accounts/login/", "/admin/login/"])
def test_after_five_wrong_passwords_even_the_right_one_waits(client, admin_user, login_url):
    with time_machine.travel("2026-03-01 12:00:00+00:00", tick=False) as clock:
        for _ in range(SIGNIN_FAILURES_LIMIT):
            response = client.post(login_url, {"username": "root", "password": "guess"})
            assert "correct username and password" in response.content.decode()

        response = client.post(login_url, {"username": "ROOT", "password": "root-password"})

        assert "Too many failed sign-ins for this username: try again in 900 s." in response.content.decode()
        assert "_auth_user_id" not in client.session
        clock.shift(900)
        assert client.post(login_url, {"username": "root", "password": "root-password"}).status_code == 302
        assert "_auth_user_id" in client.session


# --- the admin ---------------------------------------------------------------------------------------


def test_an_admin_reruns_any_page_even_a_done_one(admin_user, root_client, book):
    page_set(book, 1, Status.DONE, image_attempt=1)
    with time_machine.travel("2026-03-01 12:00:00+00:00", tick=False):
        response = root_client.post(
            f"/admin/books/{book.pk}/regenerate-page/1", {"next": f"/books/{book.pk}/"}, follow=True
        )
    assert response.redirect_chain == [(f"/books/{book.pk}/", 302)]
    assert messages_of(response) == ["Page 1 of “The Fox” was queued again (attempt 2)."]
    page = book.pages.get(number=1)
    assert page.status == Status.QUEUED and page.attempt == 2
    assert page.job_metadata["requests"] == [
        {"by": f"admin:{admin_user.pk}", "reason": "admin_rerun", "at": "2026-03-01T12:00:00+00:00", "attempt": 2}
    ]


def test_an_admin_rerun_goes_back_to_the_page_admin_by_default(root_client, book):
    page_set(book, 1, Status.DONE)
    page = book.pages.get(number=1)
    response = root_client.post(f"/admin/books/{book.pk}/regenerate-page/1")
    assert response["Location"] == f"/admin/books/bookpage/{page.pk}/change/"


def test_an_admin_rerun_of_a_page_already_rendering_says_so(root_client, book):
    page_set(book, 2, Status.RENDERING)
    response = root_client.post(f"/admin/books/{book.pk}/regenerate-page/2", follow=True)
    assert messages_of(response) == ["Page 2 of “The Fox” was not queued: already rendering."]
    assert book.pages.get(number=2).attempt == 1


def test_an_admin_rerun_needs_the_change_permission_on_pages(helpdesk, book):
    page_set(book, 1, Status.DONE)
    assert client_for(helpdesk).post(f"/admin/books/{book.pk}/regenerate-page/1").status_code == 403
    assert book.pages.get(number=1).status == Status.DONE


def test_an_admin_rerun_is_for_staff_only(bob_client, client, book):
    page_set(book, 1, Status.DONE)
    for someone in (bob_client, client):
        response = someone.post(f"/admin/books/{book.pk}/regenerate-page/1")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert book.pages.get(number=1).status == Status.DONE


def test_an_admin_rerun_of_a_page_that_does_not_exist_is_404(root_client, book):
    assert root_client.post(f"/admin/books/{book.pk}/regenerate-page/9").status_code == 404
    assert root_client.post(f"/admin/books/{book.pk + 100}/regenerate-page/1").status_code == 404


def test_an_admin_rerun_only_answers_post(root_client, book):
    assert root_client.get(f"/admin/books/{book.pk}/regenerate-page/1").status_code == 405


def test_an_admin_rerun_needs_the_csrf_token(admin_user, book):
    page_set(book, 1, Status.DONE)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"/admin/books/{book.pk}/regenerate-page/1").status_code == 403
    assert book.pages.get(number=1).status == Status.DONE


def test_the_admin_action_regenerates_the_selected_pages(root_client, book):
    page_set(book, 1, Status.DONE)
    page_set(book, 2, Status.RENDERING)
    selected = book.pages.filter(number__in=[1, 2]).values_list("pk", flat=True)

    response = root_client.post(
        "/admin/books/bookpage/",
        {"action": "regenerate_selected", "_selected_action": list(selected)},
        follow=True,
    )

    assert messages_of(response) == ["The Fox: Page 1 queued for rendering. Not queued: page 2 already rendering."]
    assert attempts(book) == {1: 2, 2: 1, 3: 1}


def test_the_admin_action_retries_the_failed_pages_of_the_selected_books(root_client, book, bob):
    other = Book.objects.create(owner=bob, title="Calm", **builtin_style())
    BookPage.objects.create(book=other, number=1, prompt="a lake", status=Status.DONE)
    page_set(book, 3, Status.FAILED)

    response = root_client.post(
        "/admin/books/book/", {"action": "retry_failed_pages", "_selected_action": [book.pk, other.pk]}, follow=True
    )

    assert messages_of(response) == [
        "The Fox: Page 3 queued for rendering.",
        "Calm: No page needs attention, so nothing was queued.",
    ]
    assert book.pages.get(number=3).status == Status.QUEUED


def test_the_admin_actions_need_the_change_permission(helpdesk, book):
    page_set(book, 3, Status.FAILED)
    client = client_for(helpdesk)
    response = client.post("/admin/books/book/", {"action": "retry_failed_pages", "_selected_action": [book.pk]})
    assert response.status_code == 200  # the changelist again, with "No action selected"
    assert book.pages.get(number=3).status == Status.FAILED
    assert "Regenerate selected pages" not in client.get("/admin/books/bookpage/").content.decode()


@pytest.mark.parametrize(
    "query, titles",
    [
        ("", {"The Fox", "Calm"}),
        ("?page_status=failed", {"The Fox"}),
        ("?page_status=done", {"Calm"}),
        ("?needs_regeneration=yes", {"The Fox"}),
        ("?needs_regeneration=no", {"Calm"}),
        ("?instance=http%3A%2F%2F127.0.0.1%3A8188", {"The Fox"}),
        ("?style__slug=sdxl", {"Calm"}),
        ("?q=heron", {"The Fox"}),
        ("?q=bob", {"Calm"}),
    ],
)
def test_the_admin_lists_books_with_filters_and_search(root_client, book, bob, query, titles):
    other = Book.objects.create(owner=bob, title="Calm", **builtin_style("sdxl"))
    BookPage.objects.create(book=other, number=1, prompt="a lake", status=Status.DONE)
    page_set(book, 2, Status.FAILED, job_metadata={"instance": "http://127.0.0.1:8188"})

    response = root_client.get(f"/admin/books/book/{query}")

    assert {b.title for b in response.context["cl"].result_list} == titles


def test_the_admin_book_list_shows_progress_and_pages_needing_attention(root_client, book):
    page_set(book, 1, Status.DONE)
    page_set(book, 2, Status.FAILED)
    html = root_client.get("/admin/books/book/").content.decode()
    assert '<span class="badge badge-failed">1</span>' in html
    assert 'title="1 of 3 done"' in html


@pytest.mark.parametrize(
    "query, numbers",
    [
        ("?status__exact=failed", [2]),
        ("?needs_regeneration__exact=1", [2]),
        ("?instance=http%3A%2F%2F127.0.0.1%3A8188", [2]),
        ("?book__style__slug=model-free", [1, 2, 3]),
        ("?q=heron", [2]),
        ("?q=fox", [1, 2, 3]),
    ],
)
def test_the_admin_lists_pages_with_badges_filters_and_search(root_client, book, query, numbers):
    page_set(book, 2, Status.FAILED, job_metadata={"instance": "http://127.0.0.1:8188"})
    response = root_client.get(f"/admin/books/bookpage/{query}")
    assert sorted(p.number for p in response.context["cl"].result_list) == numbers
    html = response.content.decode()
    assert "http://127.0.0.1:8188" in html  # the instance filter lists it


def test_the_admin_page_view_shows_attempts_with_timing_telemetry_and_the_full_error(root_client, book):
    page = page_set(book, 2, Status.FAILED)
    RenderAttempt.objects.create(
        page=page,
        number=2,
        prompt_id="6f1c2a52-93a4-4c35-9c1e-7a2d0c2a0b11",
        instance_url="http://127.0.0.1:8188",
        workflow="model-free",
        seed=42,
        outcome=RenderAttempt.Outcome.FAILED,
        error=OOM_ERROR,
        telemetry={"VramBeforeMB": 14000, "HistoryExitReason": "execution_error"},
    )

    html = root_client.get(f"/admin/books/bookpage/{page.pk}/change/").content.decode()

    assert "6f1c2a52-93a4-4c35-9c1e-7a2d0c2a0b11" in html
    assert "&quot;VramBeforeMB&quot;: 14000" in html
    assert "Allocation on device" in html  # the full error, not only the summary
    assert "ComfyUI ran out of GPU memory on node 12 (KSampler)" in html
    assert f'action="/admin/books/{book.pk}/regenerate-page/2"' in html
    assert root_client.get("/admin/renders/renderattempt/").status_code == 200
    attempt = RenderAttempt.objects.get()
    assert root_client.get(f"/admin/renders/renderattempt/{attempt.pk}/change/").status_code == 200
    assert root_client.get("/admin/renders/renderattempt/?q=6f1c2a52-93a4-4c35-9c1e-7a2d0c2a0b11").status_code == 200


def test_the_admin_shows_the_same_live_status_view_for_any_book(root_client, book):
    page_set(book, 2, Status.FAILED)
    response = root_client.get(f"/admin/books/book/{book.pk}/status/")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('<li class="page-card') == 3
    assert "ComfyUI ran out of GPU memory on node 12 (KSampler)" in html
    assert f'data-live-url="/books/{book.pk}/pages"' in html
    # Not the owner: the cards offer the admin rerun, not the owner's regenerate.
    assert f'action="/admin/books/{book.pk}/regenerate-page/2"' in html
    assert f'action="/books/{book.pk}/regenerate"' not in html


def test_the_admin_status_view_is_for_staff_who_may_view_books(bob_client, helpdesk, book):
    assert bob_client.get(f"/admin/books/book/{book.pk}/status/").status_code == 302
    html = client_for(helpdesk).get(f"/admin/books/book/{book.pk}/status/").content.decode()
    assert "regenerate-page" not in html  # may look, may not rerun


def test_pages_and_books_cannot_be_added_in_the_admin(root_client):
    assert root_client.get("/admin/books/book/add/").status_code == 403
    assert root_client.get("/admin/books/bookpage/add/").status_code == 403


def test_support_can_fix_a_prompt_in_the_admin(root_client, book):
    page = page_set(book, 2, Status.FAILED)
    response = root_client.post(
        f"/admin/books/bookpage/{page.pk}/change/",
        {"prompt": "A heron in light fog", "negative_prompt": "", "overrides": "{}", **_attempt_inline_management()},
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    page.refresh_from_db()
    assert page.prompt == "A heron in light fog" and page.status == Status.FAILED


def test_an_admin_save_never_undoes_what_a_worker_wrote_meanwhile(root_client, book, monkeypatch):
    from books.admin import BookPageAdmin

    page = page_set(book, 2, Status.RENDERING, attempt=3)
    load = BookPageAdmin.get_object

    def load_then_worker_finishes(self, request, object_id, from_field=None):
        loaded = load(self, request, object_id, from_field)
        # The worker finishes the page after the admin read the row and before it saves it.
        BookPage.objects.filter(pk=page.pk).update(status=Status.DONE, image="pages/p2.png", image_attempt=3)
        return loaded

    monkeypatch.setattr(BookPageAdmin, "get_object", load_then_worker_finishes)
    response = root_client.post(
        f"/admin/books/bookpage/{page.pk}/change/",
        {"prompt": "A heron in light fog", "negative_prompt": "", "overrides": "{}", **_attempt_inline_management()},
    )
    assert response.status_code == 302
    page.refresh_from_db()
    assert page.prompt == "A heron in light fog"
    assert (page.status, page.image.name, page.image_attempt) == (Status.DONE, "pages/p2.png", 3)


def _attempt_inline_management() -> dict[str, str]:
    return {
        "attempts-TOTAL_FORMS": "0",
        "attempts-INITIAL_FORMS": "0",
        "attempts-MIN_NUM_FORMS": "0",
        "attempts-MAX_NUM_FORMS": "0",
    }


def test_staff_see_an_admin_link_and_users_do_not(alice_client, root_client, book):
    assert "Open in admin" not in alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "Open in admin" in root_client.get(f"/books/{book.pk}/").content.decode()


def test_users_only_see_their_own_name(alice: User, alice_client):
    assert "Signed in as <strong>alice</strong>" in alice_client.get("/books/").content.decode()


def test_the_summary_and_the_cards_come_from_one_read_of_the_pages(alice_client, book):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    page_set(book, 1, Status.DONE)
    with CaptureQueriesContext(connection) as queries:
        response = alice_client.get(f"/books/{book.pk}/pages")
    # Reads of this book's pages (the estimate's count of other books' pages ahead is not one).
    page_reads = [
        q["sql"]
        for q in queries.captured_queries
        if 'FROM "books_bookpage"' in q["sql"] and 'NOT ("books_bookpage"."book_id"' not in q["sql"]
    ]
    assert len(page_reads) == 1, page_reads
    assert response.context["counts"] == {
        "queued": 2,
        "rendering": 0,
        "done": 1,
        "failed": 0,
        "cancelled": 0,
        "total": 3,
    }


def test_the_tab_title_and_icon_follow_the_books_state(alice_client, book):
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "<title>(0/3) The Fox · bookrender</title>" in html and "fill='%23175cd3'" in html
    page_set(book, 2, Status.FAILED)
    html = alice_client.get(f"/books/{book.pk}/").content.decode()
    assert "<title>⚠ 1 needs attention · The Fox · bookrender</title>" in html and "fill='%23b42318'" in html
    book.pages.update(status=Status.DONE)
    live = alice_client.get(f"/books/{book.pk}/pages").content.decode()
    assert 'data-title="✓ The Fox · bookrender"' in live and "fill='%23067647'" in live
