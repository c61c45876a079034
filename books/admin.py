"""Support's view of books: pages with their badges and errors, attempts with timing and
telemetry, targeted reruns, and the same live status view the owner sees."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from books.errors import error_technical
from books.models import Book, BookPage
from books.services import RegenerateResult, book_delete, book_regenerate
from books.status import status_context
from renders.admin import RenderAttemptInline, pretty_json

Status = BookPage.Status

admin.site.site_header = "bookrender support"
admin.site.site_title = "bookrender"
admin.site.index_title = "Books, pages and render attempts"


def status_badge(page: BookPage) -> SafeString:
    return format_html('<span class="badge badge-{}">{}</span>', page.status, page.get_status_display())


def needs_regeneration_badge(page: BookPage) -> SafeString:
    """A page flagged for regeneration is a problem: a red badge, never Django's green tick."""
    if page.needs_regeneration:
        return format_html('<span class="badge badge-failed">{}</span>', "needs regeneration")
    return format_html('<span class="quiet">{}</span>', "no")


def _when(iso: object) -> str:
    when = parse_datetime(str(iso or ""))
    return when.strftime("%d %b %Y %H:%M:%S %Z") if when else str(iso or "")


def _message_results(request: HttpRequest, results: list[tuple[Book, RegenerateResult]]) -> None:
    for book, result in results:
        level = messages.SUCCESS if result.queued else messages.WARNING
        messages.add_message(request, level, f"{book.title}: {result.summary}")


# --- filters ---------------------------------------------------------------------------------------


class PageInstanceFilter(admin.SimpleListFilter):
    """Pages by the ComfyUI instance of their latest attempt (``job_metadata["instance"]``)."""

    title = "instance"
    parameter_name = "instance"
    lookup_prefix = ""  # the path from the listed model to its pages

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # order_by() clears the default ordering, which would otherwise defeat DISTINCT.
        instances = (
            BookPage.objects.filter(job_metadata__has_key="instance")
            .order_by()
            .values_list("job_metadata__instance", flat=True)
            .distinct()
        )
        return [(str(url), str(url)) for url in sorted({str(url) for url in instances if url})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(**{f"{self.lookup_prefix}job_metadata__instance": self.value()}).distinct()
        return queryset


class BookInstanceFilter(PageInstanceFilter):
    title = "instance (any page)"
    lookup_prefix = "pages__"


class BookPageStatusFilter(admin.SimpleListFilter):
    """Books with at least one page in a status."""

    title = "page status"
    parameter_name = "page_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(status.value, f"Has {status.label}") for status in Status]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in Status.values:
            return queryset.filter(pk__in=BookPage.objects.filter(status=self.value()).values("book_id"))
        return queryset


class BookNeedsRegenerationFilter(admin.SimpleListFilter):
    title = "needs regeneration"
    parameter_name = "needs_regeneration"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Some pages"), ("no", "No page")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        flagged = BookPage.objects.filter(needs_regeneration=True).values("book_id")
        if self.value() == "yes":
            return queryset.filter(pk__in=flagged)
        if self.value() == "no":
            return queryset.exclude(pk__in=flagged)
        return queryset


def save_changed_fields(obj: models.Model, form: forms.ModelForm[Any], *, change: bool) -> None:
    """Save only the columns the form changed. A full-row save would write back every column as it
    was when the admin loaded the row, undoing what a worker wrote meanwhile (status, attempt,
    errors, the image)."""
    if not change:
        obj.save()
        return
    changed = [name for name in form.changed_data if name in {f.name for f in obj._meta.concrete_fields}]
    if changed:
        auto_now = [f.name for f in obj._meta.concrete_fields if getattr(f, "auto_now", False)]
        obj.save(update_fields=[*changed, *auto_now])


# --- books -----------------------------------------------------------------------------------------

# Each inline page posts 3 fields (id, book, prompt); 200 pages stay well under Django's 1,000.
INLINE_MAX_PAGES = 200


class BookPageInline(admin.TabularInline[BookPage, Book]):
    model = BookPage
    fields = (
        "number",
        "prompt",
        "status_badge",
        "attempt",
        "retry_count",
        "regeneration",
        "latest_error",
        "open",
    )
    readonly_fields = ("number", "status_badge", "attempt", "retry_count", "regeneration", "latest_error", "open")
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 2, "cols": 50})}}
    extra = 0
    can_delete = False  # page numbers stay 1..n; a page is rerun, not removed

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Status")
    def status_badge(self, page: BookPage) -> SafeString:
        return status_badge(page)

    @admin.display(description="Latest error")
    def latest_error(self, page: BookPage) -> str:
        return error_technical(page.latest_error) if page.latest_error and page.status == Status.FAILED else ""

    @admin.display(description="Needs regeneration")
    def regeneration(self, page: BookPage) -> SafeString:
        return needs_regeneration_badge(page)

    @admin.display(description="")
    def open(self, page: BookPage) -> SafeString:
        return format_html(
            '<a href="{}">Attempts &amp; rerun</a>', reverse("admin:books_bookpage_change", args=[page.pk])
        )


@admin.register(Book)
class BookAdmin(admin.ModelAdmin[Book]):
    list_display = ("title", "owner", "style", "progress", "attention", "created_at", "live_status")
    list_filter = (BookPageStatusFilter, BookNeedsRegenerationFilter, BookInstanceFilter, "style__slug")
    search_fields = ("title", "owner__username", "pages__prompt")
    list_select_related = ("owner",)
    # Only the title is edited here; the rest is shown as it was recorded.
    readonly_fields = (
        "owner",
        "style",
        "workflow_version",
        "values",
        "created_at",
        "updated_at",
        "live_status",
        "pages_link",
    )
    fields = ("title", *readonly_fields)
    inlines = [BookPageInline]
    actions = ["retry_failed_pages"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Book]:
        return (
            super()
            .get_queryset(request)
            # distinct: a search by prompt joins the pages a second time, which would multiply
            # every count by the number of matching pages (a 12-page book showed "144 / 144").
            .annotate(
                total=Count("pages", distinct=True),
                done=Count("pages", filter=Q(pages__status=Status.DONE), distinct=True),
                failed=Count("pages", filter=Q(pages__status=Status.FAILED), distinct=True),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # owners create books on the New book page, which queues their pages

    def save_model(self, request: HttpRequest, obj: Book, form: Any, change: bool) -> None:
        save_changed_fields(obj, form, change=change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """The page inline edits prompts; each page saves only what its row changed."""
        # What formset.save() would leave behind, for the admin's change message.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for page_form in formset.forms:
            if page_form.instance.pk and page_form.has_changed():
                save_changed_fields(page_form.instance, page_form, change=True)
                formset.changed_objects.append((page_form.instance, page_form.changed_data))

    def delete_model(self, request: HttpRequest, obj: Book) -> None:
        book_delete(book=obj)  # with its image files, which a plain delete leaves on disk

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Book]) -> None:
        for book in queryset:
            book_delete(book=book)

    def get_inlines(
        self, request: HttpRequest, obj: Book | None
    ) -> list[type[admin.options.InlineModelAdmin[Any, Any]]]:
        """The pages inline only for books small enough to save: each inline page posts a few
        fields, and past DATA_UPLOAD_MAX_NUMBER_FIELDS Django refuses the form (TooManyFieldsSent;
        about 330 pages with the default 1,000). Larger books link to their pages instead."""
        if obj is not None and obj.pages.count() > INLINE_MAX_PAGES:
            return []
        return list(self.inlines)

    @admin.display(description="Pages")
    def pages_link(self, book: Book) -> SafeString:
        count = book.pages.count()
        url = reverse("admin:books_bookpage_changelist") + f"?book__id__exact={book.pk}"
        note = "" if count <= INLINE_MAX_PAGES else f" (more than {INLINE_MAX_PAGES}: listed on their own page)"
        return format_html('<a href="{}">{} page{}</a>{}', url, count, "" if count == 1 else "s", note)

    @admin.display(description="Progress")
    def progress(self, book: Any) -> SafeString:
        return format_html(
            '<div class="progress" title="{} of {} done"><span class="done" style="width:{}%"></span></div>{} / {}',
            book.done,
            book.total,
            round(100 * book.done / book.total) if book.total else 0,
            book.done,
            book.total,
        )

    @admin.display(description="Needs attention", ordering="failed")
    def attention(self, book: Any) -> SafeString:
        if not book.failed:
            return format_html('<span class="quiet">{}</span>', "none")
        return format_html('<span class="badge badge-failed">{}</span>', book.failed)

    @admin.display(description="Status view")
    def live_status(self, book: Book) -> SafeString:
        return format_html('<a href="{}">Live status</a>', reverse("admin:books_book_status", args=[book.pk]))

    @admin.action(description="Retry failed pages of selected books", permissions=["change"])
    def retry_failed_pages(self, request: HttpRequest, queryset: QuerySet[Book]) -> None:
        assert isinstance(request.user, User)
        _message_results(
            request,
            [(book, book_regenerate(book=book, by=request.user, admin=True)) for book in queryset.order_by("pk")],
        )

    def get_urls(self) -> list[URLPattern]:
        status = path(
            "<int:book_id>/status/",
            self.admin_site.admin_view(self.status_view),
            name="books_book_status",
        )
        return [status, *super().get_urls()]

    def status_view(self, request: HttpRequest, book_id: int) -> HttpResponse:
        """The owner's live status view of any book, inside the admin."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        book = get_object_or_404(Book, pk=book_id)
        context = {
            **self.admin_site.each_context(request),
            **status_context(request, book),
            "opts": self.opts,
            "title": f"{book.title}: live status",
            "subtitle": f"owned by {book.owner.get_username()}",
        }
        return TemplateResponse(request, "admin/books/book/status.html", context)


# --- pages -----------------------------------------------------------------------------------------


@admin.register(BookPage)
class BookPageAdmin(admin.ModelAdmin[BookPage]):
    list_display = (
        "__str__",
        "status_badge",
        "attempt",
        "retry_count",
        "regeneration",
        "instance",
        "last_attempted_at",
        "latest_error",
    )
    list_display_links = ("__str__",)
    list_filter = ("status", "needs_regeneration", PageInstanceFilter, "book__style__slug")
    search_fields = ("book__title", "book__owner__username", "prompt")
    list_select_related = ("book",)
    inlines = [RenderAttemptInline]
    actions = ["regenerate_selected"]
    fieldsets = (
        (None, {"fields": ("book_link", "number", "prompt", "negative_prompt", "overrides")}),
        (
            "State",
            {
                "fields": (
                    "status_badge",
                    "attempt",
                    "retry_count",
                    "regeneration",
                    "last_attempted_at",
                    "next_attempt_at",
                    "lease_expires_at",
                )
            },
        ),
        ("Image", {"fields": ("image_preview", "image_attempt", "rendered_at")}),
        ("Errors, newest first", {"fields": ("errors_list",)}),
        ("Job metadata", {"fields": ("job_metadata_pretty", "uid"), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "book_link",
        "number",
        "status_badge",
        "attempt",
        "retry_count",
        "regeneration",
        "last_attempted_at",
        "next_attempt_at",
        "lease_expires_at",
        "image_preview",
        "image_attempt",
        "rendered_at",
        "errors_list",
        "job_metadata_pretty",
        "uid",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # pages are created with their book

    def save_model(self, request: HttpRequest, obj: BookPage, form: Any, change: bool) -> None:
        save_changed_fields(obj, form, change=change)

    @admin.display(description="Needs regeneration", ordering="needs_regeneration")
    def regeneration(self, page: BookPage) -> SafeString:
        return needs_regeneration_badge(page)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, page: BookPage) -> SafeString:
        return status_badge(page)

    @admin.display(description="Instance")
    def instance(self, page: BookPage) -> str:
        return str(page.job_metadata.get("instance", ""))

    @admin.display(description="Latest error")
    def latest_error(self, page: BookPage) -> str:
        return error_technical(page.latest_error) if page.latest_error and page.status == Status.FAILED else ""

    @admin.display(description="Book")
    def book_link(self, page: BookPage) -> SafeString:
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">live status</a>',
            reverse("admin:books_book_change", args=[page.book_id]),
            page.book,
            reverse("admin:books_book_status", args=[page.book_id]),
        )

    @admin.display(description="Image")
    def image_preview(self, page: BookPage) -> SafeString:
        if not page.image:
            return format_html('<span class="quiet">{}</span>', "none yet")
        url = reverse("books:page_image", args=[page.book_id, page.number]) + f"?v={page.image_attempt}"
        return format_html('<a href="{}"><img src="{}" alt="" style="max-width:240px;border-radius:6px"></a>', url, url)

    @admin.display(description="Errors")
    def errors_list(self, page: BookPage) -> SafeString:
        if not page.image_error:
            return format_html('<span class="quiet">{}</span>', "none")
        rows = [
            (
                entry.get("attempt", ""),
                entry.get("kind", ""),
                _when(entry.get("at")),
                entry.get("instance", "") or "no instance",
                error_technical(entry),
                entry.get("message", ""),
            )
            for entry in reversed(page.image_error)
        ]
        return format_html_join(
            "",
            '<div class="page-error-entry"><div class="quiet">Attempt {} · {} · {} · {}</div>'
            "<strong>{}</strong><pre class='json'>{}</pre></div>",
            rows,
        )

    @admin.display(description="Job metadata")
    def job_metadata_pretty(self, page: BookPage) -> SafeString:
        return pretty_json(page.job_metadata)

    @admin.action(description="Regenerate selected pages", permissions=["change"])
    def regenerate_selected(self, request: HttpRequest, queryset: QuerySet[BookPage]) -> None:
        assert isinstance(request.user, User)
        by_book: dict[int, list[int]] = defaultdict(list)
        for book_id, number in queryset.values_list("book_id", "number"):
            by_book[book_id].append(number)
        books = Book.objects.in_bulk(list(by_book))
        _message_results(
            request,
            [
                (
                    books[book_id],
                    book_regenerate(book=books[book_id], by=request.user, page_numbers=numbers, admin=True),
                )
                for book_id, numbers in sorted(by_book.items())
            ],
        )
