from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from books.errors import error_in_plain_words, error_public
from books.forms import BookForm
from books.models import Book, BookPage
from books.services import (
    BookInputError,
    RegenerateError,
    RegenerateResult,
    book_create,
    book_create_throttle,
    book_regenerate,
    regenerate_throttle,
)
from renders.workflows import WorkflowError, workflow_get

Status = BookPage.Status
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
    form = BookForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        assert isinstance(request.user, User)
        wait = book_create_throttle(user=request.user)
        if wait:
            form.add_error(None, f"Too many new books: try again in {wait} s. Your pages are still here.")
            return render(request, "books/book_new.html", {"form": form}, status=429)
        try:
            book = book_create(
                owner=request.user,
                title=form.cleaned_data["title"],
                workflow=form.cleaned_data["workflow"],
                pages=form.pages,
            )
        except BookInputError as exc:
            form.add_input_errors(exc)
        else:
            count = book.pages.count()
            messages.success(request, f"{book.title!r} was created: {count} page{'s' if count > 1 else ''} queued.")
            return redirect("books:status", book_id=book.pk)
    return render(request, "books/book_new.html", {"form": form})


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
    two seconds while pages render; the same partial the full page includes."""
    book = _get_book_for_user(request, book_id)
    response = render(request, "books/_book_live.html", status_context(request, book))
    response["Cache-Control"] = "no-store"
    return response


def status_context(request: HttpRequest, book: Book) -> dict[str, Any]:
    """What the status page shows; the admin's status view shows the same."""
    pages = list(book.pages.order_by("number"))
    counts = _counts(book)
    try:
        workflow_title = workflow_get(book.workflow).title
    except WorkflowError:
        workflow_title = book.workflow
    if request.user.pk == book.owner_id:
        actions = "owner"
    elif request.user.has_perm("books.change_bookpage"):
        actions = "admin"
    else:
        actions = ""
    return {
        "book": book,
        "pages": [_page_view(page, internals=request.user.is_staff) for page in pages],
        "counts": counts,
        "active": counts[Status.QUEUED] + counts[Status.RENDERING] > 0,
        "workflow_title": workflow_title,
        "actions": actions,
    }


def _page_view(page: BookPage, *, internals: bool) -> dict[str, Any]:
    """What a card shows of a page. Without ``internals`` (not staff): no ComfyUI URLs or raw
    exception text, only what the error means."""
    raw = page.latest_error
    latest = raw if internals or not raw else error_public(raw)
    earlier = [
        {**entry, "text": error_in_plain_words(entry)} if internals else error_public(entry)
        for entry in reversed(page.image_error[:-1])
    ]
    return {
        "page": page,
        "error_text": error_in_plain_words(raw, internals=internals) if raw and page.status == Status.FAILED else "",
        "error": {**latest, "at": parse_datetime(str(latest.get("at") or ""))} if latest else None,
        "earlier_errors": earlier,
        # Changes whenever the card would look different, so the script replaces only those cards.
        "version": f"{page.status}-{page.attempt}-{page.image_attempt or 0}",
    }


@login_required
@require_GET
def page_image(request: HttpRequest, book_id: int, number: int) -> FileResponse:
    book = _get_book_for_user(request, book_id)
    page = get_object_or_404(BookPage, book=book, number=number)
    if not page.image:
        raise Http404("this page has no image yet")
    response = FileResponse(page.image.open("rb"), content_type="image/png")
    # The cards link the image with ?v=<attempt>, so a cached image is never a stale one.
    response["Cache-Control"] = "private, max-age=86400"
    return response


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
    return JsonResponse(book_as_json(book, internals=request.user.is_staff))


def _counts(book: Book) -> dict[str, int]:
    counts = {status.value: 0 for status in Status}
    for row in book.pages.values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    counts["total"] = sum(counts.values())
    return counts


def book_as_json(book: Book, *, internals: bool) -> dict[str, Any]:
    """The API's view of a book; without ``internals`` (not staff) errors carry no ComfyUI URLs or
    raw exception text."""

    def shown(entry: dict[str, Any]) -> dict[str, Any]:
        return entry if internals else error_public(entry)

    return {
        "id": book.pk,
        "title": book.title,
        "workflow": book.workflow,
        "counts": _counts(book),
        "regenerate_url": reverse("books:regenerate", args=[book.pk]),
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
                "error": error_in_plain_words(page.latest_error, internals=internals) if page.latest_error else None,
                "latest_error": shown(page.latest_error) if page.latest_error else None,
                "errors": [shown(entry) for entry in page.image_error],
            }
            for page in book.pages.order_by("number")
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
        messages.success(request, f"Page {number} of {book.title!r} was queued again (attempt {page.attempt}).")
    else:
        messages.warning(request, f"Page {number} of {book.title!r} was not queued: {result.skipped[number]}.")
    return HttpResponseRedirect(_back(request, reverse("admin:books_bookpage_change", args=[page.pk])))


def _back(request: HttpRequest, default: str) -> str:
    """Where a button's POST should return to: its ``next`` field or the page it was on."""
    for candidate in (request.POST.get("next"), request.headers.get("Referer")):
        if candidate and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return candidate
    return default
