from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
)
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from books.errors import error_advice, error_in_plain_words, error_public
from books.forms import BookForm, PageForm
from books.images import book_pdf, book_zip, page_thumbnail
from books.models import Book, BookPage, PageVersion, Webhook
from books.services import (
    BookInputError,
    PageEditError,
    PageSpec,
    RegenerateError,
    RegenerateResult,
    book_cancel,
    book_check,
    book_create,
    book_create_throttle,
    book_delete,
    book_duplicate,
    book_regenerate,
    page_add,
    page_delete,
    page_edit,
    page_move,
    page_version_pick,
    regenerate_throttle,
)
from books.status import status_context
from books.storage import STORAGE_ERRORS, StorageUnavailable, file_response, media_kind
from books.webhooks import WebhookError, webhook_save

Status = BookPage.Status
STORAGE_DOWN = "The file storage did not answer, so the image was not saved; nothing changed. Try again in a minute."
ACTIVE = (Status.QUEUED, Status.RENDERING)


def _get_book_for_user(request: HttpRequest, book_id: int) -> Book:
    """The book if the user may see it; 404 otherwise (never 403: other people's book ids are
    none of anyone's business). Users with the view permission on books (support) may see every
    book; being staff alone is not enough."""
    books = (
        Book.objects.all() if request.user.has_perm("books.view_book") else Book.objects.filter(owner=request.user.pk)
    )
    return get_object_or_404(books, pk=book_id)


def _get_own_book(request: HttpRequest, book_id: int) -> Book:
    """The book if the user owns it; 404 for everyone else, staff included (support reruns pages
    through the admin, where the change permission is checked)."""
    return get_object_or_404(Book, pk=book_id, owner=request.user.pk)


def _wants_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json" or "application/json" in request.headers.get("Accept", "")


def _login_required_or_401(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """login_required, except that a script asking for JSON gets 401 instead of a login page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if _wants_json(request) or request.path.startswith("/api/"):
            return JsonResponse({"error": "Sign in first."}, status=401)
        return redirect_to_login(request.get_full_path())

    return wrapper


# --- My books, New book ---------------------------------------------------------------------------


@login_required
@require_GET
def book_list(request: HttpRequest) -> HttpResponse:
    books = (
        Book.objects.filter(owner=request.user.pk)
        .annotate(
            total=Count("pages"),
            done=Count("pages", filter=Q(pages__status=Status.DONE)),
            failed=Count("pages", filter=Q(pages__status=Status.FAILED)),
            active=Count("pages", filter=Q(pages__status__in=ACTIVE)),
        )
        .order_by("-created_at")
    )
    return render(request, "books/book_list.html", {"books": books})


@login_required
@require_http_methods(["GET", "POST"])
def book_new(request: HttpRequest) -> HttpResponse:
    """Two steps: the first POST shows how many pages the input makes (nothing renders yet); the
    second, from the preview's "Create" button (``confirm``), creates the book and queues it."""
    form = BookForm(request.POST or None, request.FILES or None)
    preview: list[PageSpec] = []
    if request.method == "POST" and form.is_valid():
        assert isinstance(request.user, User)
        try:
            fields = {
                "title": form.cleaned_data["title"],
                "style": form.cleaned_data["style"],
                "values": form.values,
                "pages": form.pages_with_inputs(),
            }
            # The page count shown is the one created: text changed after the preview is shown again.
            if "confirm" not in request.POST or request.POST.get("expected_pages") != str(len(form.pages)):
                book_check(**fields)
                preview = fields["pages"]
            elif wait := book_create_throttle(user=request.user):
                return _too_many_books(request, wait, form=form)
            else:
                book = book_create(owner=request.user, **fields)
                count = book.pages.count()
                messages.success(request, f"“{book.title}” was created: {count} page{pluralize(count)} queued.")
                return redirect("books:status", book_id=book.pk)
        except StorageUnavailable:
            form.add_error("input_images", STORAGE_DOWN)
        except BookInputError as exc:
            form.add_input_errors(exc)
    return render(request, "books/book_new.html", {"form": form, "preview": preview})


def _too_many_books(
    request: HttpRequest, wait: int, *, form: BookForm | None, book: Book | None = None
) -> HttpResponse:
    """429 with Retry-After: JSON for scripts; the form again with its pages (New book), or the
    status page's message (Duplicate book)."""
    text = f"Too many new books: try again in {wait} s."
    if _wants_json(request):
        response: HttpResponse = JsonResponse({"error": text, "retry_after": wait}, status=429)
    elif form is not None:
        form.add_error(None, f"{text} Your pages are still here.")
        response = render(request, "books/book_new.html", {"form": form}, status=429)
    else:
        assert book is not None
        messages.error(request, text)
        response = redirect("books:status", book_id=book.pk)
        return response  # a redirect: the browser shows the message on the status page
    response["Retry-After"] = str(wait)
    return response


# --- the status page and its live parts -----------------------------------------------------------


@login_required
@require_GET
def book_status(request: HttpRequest, book_id: int) -> HttpResponse:
    book = _get_book_for_user(request, book_id)
    return render(request, "books/book_status.html", status_context(request, book))


@login_required
@require_GET
def book_cards(request: HttpRequest, book_id: int) -> HttpResponse:
    """The live part of the status page (summary and page cards), which its script fetches every
    two seconds while pages render; the same partial the full page includes. With ``?since=`` (the
    ``data-cursor`` of the previous answer) only the cards changed since then."""
    book = _get_book_for_user(request, book_id)
    context = status_context(request, book, since=request.GET.get("since", ""))
    response = render(request, "books/_book_live.html", context)
    response["Cache-Control"] = "no-store"
    return response


def _stored(request: HttpRequest, name: str, *, download_name: str | None = None) -> HttpResponseBase:
    """A stored file for a browser whose right to it was checked (see books.storage). Linked with
    ?v=<attempt> or by a name that never changes, so it may be cached; a presigned redirect only
    as long as its URL lasts."""
    try:
        response = file_response(name, download_name=download_name)
    except StorageUnavailable:
        return _storage_unavailable(request)
    if isinstance(response, HttpResponseRedirect):
        response["Cache-Control"] = f"private, max-age={max(1, settings.BOOKRENDER_S3_URL_EXPIRY_SEC // 2)}"
    else:
        response["Cache-Control"] = "private, max-age=86400"
    return response


def _storage_unavailable(request: HttpRequest) -> HttpResponse:
    return render(request, "books/storage_unavailable.html", status=503)


@login_required
@require_GET
def page_image(request: HttpRequest, book_id: int, number: int) -> HttpResponseBase:
    book = _get_book_for_user(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    if not page.image:
        raise Http404("this page has no image yet")
    return _stored(request, str(page.image.name))


@login_required
@require_GET
def page_input(request: HttpRequest, book_id: int, number: int) -> HttpResponseBase:
    """A page's input image (the picture the workflow starts from)."""
    book = _get_book_for_user(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    if not page.input_image:
        raise Http404("this page has no input image")
    return _stored(request, str(page.input_image.name))


# --- regenerate, and the JSON twin -------------------------------------------------------------------


@_login_required_or_401
@require_POST
def book_regenerate_view(request: HttpRequest, book_id: int) -> HttpResponse:
    """Retry all failed pages, or the pages named in the request (form fields ``page=3``, or a
    JSON body ``{"pages": [3, 5]}``). Answers JSON to a JSON request, else redirects back to the
    status page with a message."""
    book = _get_own_book(request, book_id)
    assert isinstance(request.user, User)
    wait = regenerate_throttle(user=request.user)
    if wait:
        text = f"Too many regenerate requests: try again in {wait} s."
        if _wants_json(request):
            response = JsonResponse({"error": text, "retry_after": wait}, status=429)
            response["Retry-After"] = str(wait)
            return response
        messages.error(request, text)
        return redirect("books:status", book_id=book.pk)
    try:
        numbers = _requested_page_numbers(request)
        result = book_regenerate(book=book, by=request.user, page_numbers=numbers)
    except RegenerateError as exc:
        if _wants_json(request):
            return JsonResponse({"error": str(exc)}, status=400)
        messages.error(request, str(exc))
        return redirect("books:status", book_id=book.pk)
    if _wants_json(request):
        return JsonResponse(_result_as_json(result))
    level = messages.SUCCESS if result.queued else messages.WARNING
    messages.add_message(request, level, result.summary)
    return redirect("books:status", book_id=book.pk)


def _requested_page_numbers(request: HttpRequest) -> list[int] | None:
    """The page numbers a regenerate request names; None when it names none (the failed pages)."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            raise RegenerateError('The request body is not valid JSON; send {"pages": [3, 5]}.') from None
        raw = data.get("pages") if isinstance(data, dict) else data
        if raw is not None and (
            not isinstance(raw, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in raw)
        ):
            raise RegenerateError('"pages" must be a list of page numbers, like [3, 5].')
        return raw or None
    try:
        return [int(value) for value in request.POST.getlist("page")] or None
    except ValueError:
        raise RegenerateError("Page numbers must be whole numbers.") from None


def _result_as_json(result: RegenerateResult) -> dict[str, Any]:
    return {
        "queued": result.queued,
        "skipped": {str(number): reason for number, reason in result.skipped.items()},
        "message": result.summary,
    }


@_login_required_or_401
@require_GET
def api_book(request: HttpRequest, book_id: int) -> JsonResponse:
    book = _get_book_for_user(request, book_id)
    after = request.GET.get("after", "0")
    if not after.isdigit():
        return JsonResponse({"error": "after must be a page number, like ?after=500."}, status=400)
    return JsonResponse(book_as_json(book, internals=request.user.is_staff, after=int(after)))


# One answer of the API holds at most this many pages; "next" asks for the following ones.
API_PAGES_PER_ANSWER = 500


def book_as_json(book: Book, *, internals: bool, after: int = 0) -> dict[str, Any]:
    """The API's view of a book: the counts of the whole book, and its pages after page ``after``
    (at most API_PAGES_PER_ANSWER; ``next`` is the URL of the rest, or None). Without
    ``internals`` (not staff) errors carry no ComfyUI URLs or raw exception text."""
    statuses = list(book.pages.order_by("number").values_list("pk", "status"))
    wanted = book.pages.filter(number__gt=after).order_by("number")[: API_PAGES_PER_ANSWER + 1]
    pages = list(wanted)
    more = len(pages) > API_PAGES_PER_ANSWER
    pages = pages[:API_PAGES_PER_ANSWER]
    # The counts take the pages' status from the rows the answer shows, so the two agree.
    read = {page.pk: page.status for page in pages}
    counts = {status.value: 0 for status in Status}
    for pk, status in statuses:
        counts[read.get(pk, status)] += 1
    counts["total"] = len(statuses)

    def shown(entry: dict[str, Any]) -> dict[str, Any]:
        return entry if internals else error_public(entry)

    return {
        "id": book.pk,
        "title": book.title,
        "style": book.style.slug,
        "workflow": str(book.workflow_version),
        "values": book.values,
        "counts": counts,
        "regenerate_url": reverse("books:regenerate", args=[book.pk]),
        "next": (reverse("books:api_book", args=[book.pk]) + f"?after={pages[-1].number}") if more else None,
        "pages": [
            {
                "number": page.number,
                "status": page.status,
                "badge": page.get_status_display(),
                "attempt": page.attempt,
                "retry_count": page.retry_count,
                "needs_regeneration": page.needs_regeneration,
                "last_attempted_at": page.last_attempted_at.isoformat() if page.last_attempted_at else None,
                "image_url": (
                    reverse("books:page_image", args=[book.pk, page.number]) + f"?v={page.image_attempt}"
                    if page.image
                    else None
                ),
                "error": error_in_plain_words(page.latest_error) if page.latest_error else None,
                "advice": (
                    error_advice(page.latest_error, retrying=page.status != Status.FAILED)
                    if page.latest_error
                    else None
                ),
                "next_attempt_at": page.next_attempt_at.isoformat() if page.next_attempt_at else None,
                "latest_error": shown(page.latest_error) if page.latest_error else None,
                "errors": [shown(entry) for entry in page.image_error],
            }
            for page in pages
        ],
    }


# --- support: a targeted rerun from the admin -------------------------------------------------------


@require_POST
def admin_regenerate_page(request: HttpRequest, book_id: int, number: int) -> HttpResponse:
    """``POST /admin/books/<book_id>/regenerate-page/<number>``: rerun any page of any book, even
    a Done one. Wrapped in ``admin.site.admin_view`` (staff only, CSRF) in config/urls.py; needs
    the change permission on pages. Redirects back to where the button was."""
    if not request.user.has_perm("books.change_bookpage"):
        raise PermissionDenied("Rerunning a page needs the permission to change pages.")
    assert isinstance(request.user, User)
    book = get_object_or_404(Book, pk=book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    result = book_regenerate(book=book, by=request.user, page_numbers=[number], admin=True)
    if result.queued:
        page.refresh_from_db()
        messages.success(request, f"Page {number} of “{book.title}” was queued again (attempt {page.attempt}).")
    else:
        messages.warning(request, f"Page {number} of “{book.title}” was not queued: {result.skipped[number]}.")
    return HttpResponseRedirect(_back(request, reverse("admin:books_bookpage_change", args=[page.pk])))


def _back(request: HttpRequest, default: str) -> str:
    """Where a button's POST should return to: its ``next`` field or the page it was on."""
    for candidate in (request.POST.get("next"), request.headers.get("Referer")):
        if candidate and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return candidate
    return default


# --- the gallery, thumbnails and downloads -------------------------------------------------------------


@login_required
@require_GET
def page_thumb(request: HttpRequest, book_id: int, number: int) -> HttpResponseBase:
    """A page's thumbnail (WebP, about 30 KB; an animation's first frame), made on first request
    and kept in the storage. A video has none: its card shows the video's own first frame."""
    book = _get_book_for_user(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    if not page.image or media_kind(str(page.image.name)) == "video":
        raise Http404("this page has no image yet")
    try:
        name = page_thumbnail(page)
    except STORAGE_ERRORS:
        return _storage_unavailable(request)
    # Linked with ?v=<attempt>, like the image: a new image gets a new URL.
    return _stored(request, name)


@login_required
@require_GET
def book_gallery(request: HttpRequest, book_id: int) -> HttpResponse:
    """The book's images in page order. ``?page=N`` opens page N in the lightbox (previous, next,
    zoom); it works without JavaScript, and the script only saves the page loads."""
    book = _get_book_for_user(request, book_id)
    pages = [page for page in book.pages.filter(status=Status.DONE).order_by("number") if page.image]
    numbers = [page.number for page in pages]
    opened = None
    if request.GET.get("page", "").isdigit() and int(request.GET["page"]) in numbers:
        index = numbers.index(int(request.GET["page"]))
        page = pages[index]
        # The version strip: every kept version, newest first; ?version=A shows that one here.
        versions = list(page.versions.order_by("-attempt").values_list("attempt", flat=True))
        wanted = request.GET.get("version", "")
        viewing = int(wanted) if wanted.isdigit() and int(wanted) in versions else page.image_attempt
        opened = {
            "page": page,
            "previous": numbers[index - 1] if index > 0 else None,
            "next": numbers[index + 1] if index + 1 < len(numbers) else None,
            "zoom": request.GET.get("zoom") == "1",
            "versions": versions if len(versions) > 1 else [],
            "viewing": viewing,
            "owner": book.owner_id == request.user.pk,
        }
    total = book.pages.count()
    return render(
        request,
        "books/book_gallery.html",
        {"book": book, "pages": pages, "opened": opened, "missing": total - len(pages), "total": total},
    )


@login_required
@require_GET
def book_download_zip(request: HttpRequest, book_id: int) -> HttpResponseBase:
    book = _get_book_for_user(request, book_id)
    try:
        archive = book_zip(book)
    except STORAGE_ERRORS:
        return _storage_unavailable(request)
    return FileResponse(archive, as_attachment=True, filename=f"{_file_stem(book)}.zip")


@login_required
@require_GET
def book_download_pdf(request: HttpRequest, book_id: int) -> HttpResponseBase:
    book = _get_book_for_user(request, book_id)
    try:
        pdf = book_pdf(book)
    except STORAGE_ERRORS:
        return _storage_unavailable(request)
    if pdf is None:
        messages.warning(request, "No page has an image yet, so there is nothing to put in a PDF.")
        return redirect("books:status", book_id=book.pk)
    return FileResponse(pdf, as_attachment=True, filename=f"{_file_stem(book)}.pdf", content_type="application/pdf")


def _file_stem(book: Book) -> str:
    return slugify(book.title)[:80] or f"book-{book.pk}"


# --- owners fix their books ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def page_edit_view(request: HttpRequest, book_id: int, number: int) -> HttpResponse:
    """Edit a Done or failed page's prompt, negative prompt, seed and size, then render it again."""
    book = _get_own_book(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    assert isinstance(request.user, User)
    form = PageForm(book, request.POST, request.FILES) if request.method == "POST" else PageForm.for_page(page)
    if request.method == "POST" and form.is_valid():
        spec = form.spec
        try:
            result = page_edit(
                page=page,
                by=request.user,
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                overrides=spec.overrides,
                input_image=form.input_image_name(),
            )
        except StorageUnavailable:
            form.add_error("input_image", STORAGE_DOWN)
        except PageEditError as exc:
            _add_page_errors(form, exc)
        else:
            messages.success(request, f"Page {number} was changed. {result.summary}")
            return redirect(reverse("books:status", args=[book.pk]) + f"#page-{number}")
    return render(request, "books/page_edit.html", {"book": book, "page": page, "form": form, "editing": True})


@login_required
@require_http_methods(["GET", "POST"])
def page_add_view(request: HttpRequest, book_id: int) -> HttpResponse:
    book = _get_own_book(request, book_id)
    assert isinstance(request.user, User)
    form = PageForm(book, request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            spec = replace(form.spec, input_image=form.input_image_name() or "")
            page = page_add(book=book, by=request.user, spec=spec)
        except StorageUnavailable:
            form.add_error("input_image", STORAGE_DOWN)
        except PageEditError as exc:
            _add_page_errors(form, exc)
        else:
            messages.success(request, f"Page {page.number} was added and queued for rendering.")
            return redirect(reverse("books:status", args=[book.pk]) + f"#page-{page.number}")
    return render(request, "books/page_edit.html", {"book": book, "page": None, "form": form, "editing": False})


def _add_page_errors(form: PageForm, exc: PageEditError) -> None:
    for key, message in exc.errors.items():
        sentence = message[:1].upper() + message[1:] + "."
        form.add_error(key if key in form.fields else None, sentence)


@login_required
@require_POST
def page_delete_view(request: HttpRequest, book_id: int, number: int) -> HttpResponse:
    book = _get_own_book(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    try:
        page_delete(page=page)
    except PageEditError as exc:
        messages.error(request, f"{exc}.".capitalize())
    else:
        messages.success(request, f"Page {number} was deleted; the pages after it moved up one.")
    return redirect("books:status", book_id=book.pk)


@login_required
@require_POST
def page_move_view(request: HttpRequest, book_id: int, number: int) -> HttpResponse:
    book = _get_own_book(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    by = -1 if request.POST.get("direction") == "earlier" else 1
    new_number = page_move(page=page, by=by)
    if new_number != number:
        messages.success(request, f"Page {number} is now page {new_number}.")
    return redirect(reverse("books:status", args=[book.pk]) + f"#page-{new_number}")


@login_required
@require_POST
def book_duplicate_view(request: HttpRequest, book_id: int) -> HttpResponse:
    book = _get_own_book(request, book_id)
    assert isinstance(request.user, User)
    if wait := book_create_throttle(user=request.user):  # a copy is a new book, up to MAX_PAGES renders
        return _too_many_books(request, wait, form=None, book=book)
    copy = book_duplicate(book=book, by=request.user)
    count = copy.pages.count()
    messages.success(request, f"“{copy.title}” was created: {count} page{pluralize(count)} queued.")
    return redirect("books:status", book_id=copy.pk)


@login_required
@require_http_methods(["GET", "POST"])
def book_delete_view(request: HttpRequest, book_id: int) -> HttpResponse:
    """GET asks "are you sure?"; POST deletes the book and its files."""
    book = _get_own_book(request, book_id)
    if request.method == "POST":
        title = book.title
        book_delete(book=book)
        messages.success(request, f"“{title}” and its images were deleted.")
        return redirect("books:list")
    return render(request, "books/book_delete.html", {"book": book, "pages": book.pages.count()})


# --- cancel, and versions -----------------------------------------------------------------------


@login_required
@require_POST
def book_cancel_view(request: HttpRequest, book_id: int) -> HttpResponse:
    """Stop the book's pending and rendering pages, or the ones named (``page=3``). Owners only."""
    book = _get_book_for_user(request, book_id)
    if book.owner_id != request.user.pk:
        raise PermissionDenied("only the book's owner may stop it")
    assert isinstance(request.user, User)
    try:
        numbers = [int(number) for number in request.POST.getlist("page")]
    except ValueError:
        return HttpResponseBadRequest("page must be a page number")
    stopped = book_cancel(book=book, by=request.user, page_numbers=numbers or None)
    if stopped:
        messages.success(request, f"Stopped {len(stopped)} page{pluralize(len(stopped))}: they will not be drawn.")
    else:
        messages.info(request, "Nothing to stop: no page was pending or rendering.")
    return redirect("books:status", book_id=book.pk)


@login_required
@require_GET
def page_version_image(request: HttpRequest, book_id: int, number: int, attempt: int) -> HttpResponseBase:
    book = _get_book_for_user(request, book_id)
    version = get_object_or_404(PageVersion, page__book=book, page__number=number, attempt=attempt)
    return _stored(request, str(version.image.name))  # a version never changes


@login_required
@require_POST
def page_version_choose_view(request: HttpRequest, book_id: int, number: int, attempt: int) -> HttpResponse:
    """Show this version of the page (every successful render is kept)."""
    book = _get_book_for_user(request, book_id)
    if book.owner_id != request.user.pk:
        raise PermissionDenied("only the book's owner may choose its images")
    try:
        page_version_pick(book=book, number=number, attempt=attempt)
    except (BookPage.DoesNotExist, PageVersion.DoesNotExist):
        raise Http404(f"page {number} has no version from attempt {attempt}") from None
    messages.success(request, f"Page {number} now shows its image from attempt {attempt}.")
    return HttpResponseRedirect(_back(request, reverse("books:status", args=[book.pk]) + f"#page-{number}"))


# --- the owner's webhook ----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def webhook_view(request: HttpRequest) -> HttpResponse:
    """Set or remove the URL that gets a signed JSON event when one of your books settles."""
    assert isinstance(request.user, User)
    hook = Webhook.objects.filter(user=request.user).first()
    error = ""
    url = request.POST.get("url", "").strip() if request.method == "POST" else (hook.url if hook else "")
    if request.method == "POST":
        if "remove" in request.POST:
            Webhook.objects.filter(user=request.user).delete()
            messages.success(request, "Your webhook was removed: no more events are sent.")
            return redirect("books:webhook")
        try:
            webhook_save(user=request.user, url=url)
        except WebhookError as exc:
            error = str(exc)
        else:
            messages.success(request, "Saved: the next book that finishes or needs attention is sent there.")
            return redirect("books:webhook")
    status = 400 if error else 200
    return render(request, "books/webhook.html", {"hook": hook, "url": url, "error": error}, status=status)
