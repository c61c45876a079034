"""What people do with books: create one, regenerate pages. Views, admin actions and management
commands all call these; the render pipeline itself lives in renders/services.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Max

from books.models import Book, BookPage, PageVersion
from books.ratelimit import rate_limit_hit
from renders.services import pages_enqueue
from workflows.models import Style
from workflows.properties import PropertyValuesError, Value
from workflows.services import StyleError, book_values, page_overrides_check, style_get_offered

# A book is a few dozen pages; the limit stops a runaway upload from flooding the GPUs.
MAX_PAGES = 500
MAX_PROMPT_CHARS = 4000
# Regenerate requests a user may make per window: enough for a person clicking through a book's
# failed pages, few enough that a looping script cannot keep the GPUs busy on one book.
REGENERATE_LIMIT = 10
REGENERATE_WINDOW_SEC = 60
BOOK_CREATE_WINDOW_SEC = 3600

Status = BookPage.Status


class BookInputError(ValueError):
    """Input that cannot become a book; ``errors`` maps a field (or "page 3") to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {value}" for key, value in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class PageSpec:
    prompt: str
    negative_prompt: str = ""
    # The page's own property values ({"width": 512, "seed": 7}), checked against the book's style.
    overrides: dict[str, Any] = field(default_factory=dict)
    # A stored input image's name (books.inputs.input_image_store); "" for none.
    input_image: str = ""


def pages_from_json(data: Any, *, style: Style | None = None) -> list[PageSpec]:
    """Pages from an uploaded JSON document: a list of prompts, or of objects
    ``{"prompt", "negative_prompt"?, <property>?...}`` (``width``, ``height``, ``seed``, or any
    setting of the chosen style), or ``{"pages": [...]}``. Every page is checked in one pass
    (layout, types, empty and too-long prompts, and with ``style`` its settings), so a person
    fixes the file once; a prompt that is not a string is refused, never turned into "None"."""
    if isinstance(data, dict) and "pages" in data:
        data = data["pages"]
    if not isinstance(data, list):
        raise BookInputError({"pages": "expected a list of pages, or an object with a 'pages' list"})
    if len(data) > MAX_PAGES:
        raise BookInputError({"pages": f"{len(data)} pages is more than the limit of {MAX_PAGES} per book"})
    specs: list[PageSpec] = []
    errors: dict[str, str] = {}
    for number, item in enumerate(data, start=1):
        problems: list[str] = []
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            errors[f"page {number}"] = "expected a prompt string or an object with a 'prompt'"
            continue
        prompt, negative = item.get("prompt"), item.get("negative_prompt", "")
        if not isinstance(prompt, str):
            problems.append("the prompt must be text in quotes" if "prompt" in item else "the prompt is missing")
            prompt = ""
        elif problem := prompt_problem(prompt):
            problems.append(problem)
        if not isinstance(negative, str):
            problems.append("the negative prompt must be text in quotes")
            negative = ""
        overrides = {key: value for key, value in item.items() if key not in ("prompt", "negative_prompt")}
        if style is not None and overrides:
            try:
                page_overrides_check(version=style.version, fixed=style.overrides, overrides=overrides)
            except PropertyValuesError as exc:
                problems.extend(exc.errors.values())
        if problems:
            errors[f"page {number}"] = "; ".join(problems)
        else:
            specs.append(PageSpec(prompt=prompt, negative_prompt=negative, overrides=overrides))
    if errors:
        raise BookInputError(errors)
    return specs


def pages_from_text(text: str) -> list[PageSpec]:
    """One page per paragraph when the text has blank lines between paragraphs; otherwise one page
    per line, which is how people type a list of prompts."""
    text = text.replace("\r\n", "\n")
    blocks = text.split("\n\n") if "\n\n" in text.strip() else text.split("\n")
    paragraphs = [" ".join(block.split()) for block in blocks]
    return [PageSpec(prompt=p) for p in paragraphs if p]


def prompt_problem(prompt: str) -> str:
    """What is wrong with a prompt, or "" when nothing is."""
    if not prompt.strip():
        return "the prompt is empty"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"the prompt is longer than {MAX_PROMPT_CHARS} characters"
    return ""


def book_check(
    *, title: str, style: str | Style, pages: list[PageSpec], values: dict[str, Any] | None = None
) -> tuple[Style, dict[str, Value]]:
    """The style and the values a new book would record, or BookInputError naming every problem
    that would stop ``book_create`` (keys: "title", "style", "value:<property>", "pages",
    "page 3"). The New book page calls it before it shows the page count, so nothing is created
    until the person agrees."""
    errors: dict[str, str] = {}
    if not title.strip():
        errors["title"] = "a book needs a title"
    elif len(title) > 200:
        errors["title"] = "at most 200 characters"
    chosen: Style | None = None
    recorded: dict[str, Value] = {}
    try:
        chosen = style_get_offered(style if isinstance(style, str) else style.slug)
        recorded = book_values(style=chosen, chosen=values or {})
    except StyleError as exc:
        errors["style"] = str(exc)
    except PropertyValuesError as exc:
        errors.update({f"value:{name}": message for name, message in exc.errors.items()})
    if not pages:
        errors["pages"] = "a book needs at least one page"
    elif len(pages) > MAX_PAGES:
        errors["pages"] = f"{len(pages)} pages is more than the limit of {MAX_PAGES} per book"
    for number, spec in enumerate(pages[:MAX_PAGES], start=1):
        problems = [prompt_problem(spec.prompt)]
        if chosen is not None and spec.overrides:
            try:
                page_overrides_check(version=chosen.version, fixed=chosen.overrides, overrides=spec.overrides)
            except PropertyValuesError as exc:
                problems.extend(exc.errors.values())
        if problem := "; ".join(p for p in problems if p):
            errors[f"page {number}"] = problem
    if errors or chosen is None:
        raise BookInputError(errors)
    return chosen, recorded


def book_create(
    *, owner: User, title: str, style: str | Style, pages: list[PageSpec], values: dict[str, Any] | None = None
) -> Book:
    """Create a book in ``style`` (its slug, or the row) with the owner's ``values`` for the
    style's settings, and queue every page."""
    chosen, recorded = book_check(title=title, style=style, pages=pages, values=values)
    with transaction.atomic():
        book = Book.objects.create(
            owner=owner, title=title.strip(), style=chosen, workflow_version=chosen.version, values=recorded
        )
        BookPage.objects.bulk_create(
            BookPage(
                book=book,
                number=number,
                prompt=spec.prompt.strip(),
                negative_prompt=spec.negative_prompt.strip(),
                overrides=page_overrides_check(
                    version=chosen.version, fixed=chosen.overrides, overrides=spec.overrides
                ),
                input_image=spec.input_image,
            )
            for number, spec in enumerate(pages, start=1)
        )
        page_ids = list(book.pages.order_by("number").values_list("pk", flat=True))
        pages_enqueue(page_ids=page_ids, by=f"user:{owner.pk}", reason="create")
    return book


class RegenerateError(ValueError):
    """A regenerate request that names pages the book does not have; nothing was queued."""


@dataclass(frozen=True)
class RegenerateResult:
    queued: list[int]
    # Page number -> why it was not queued ("already pending", "already rendering").
    skipped: dict[int, str]

    @property
    def summary(self) -> str:
        """The result in one or two sentences, for the flash message and the JSON answer."""
        if not self.queued and not self.skipped:
            return "No page needs attention, so nothing was queued."
        parts = []
        if self.queued:
            parts.append(f"{_pages_phrase(self.queued).capitalize()} queued for rendering.")
        if self.skipped:
            reasons: dict[str, list[int]] = {}
            for number, reason in sorted(self.skipped.items()):
                reasons.setdefault(reason, []).append(number)
            skipped = "; ".join(f"{_pages_phrase(numbers)} {reason}" for reason, numbers in reasons.items())
            parts.append(f"Not queued: {skipped}.")
        return " ".join(parts)


def book_regenerate(
    *,
    book: Book,
    by: User,
    page_numbers: list[int] | None = None,
    admin: bool = False,
) -> RegenerateResult:
    """Queue a new attempt of the named pages, or, when none are named, of every page that needs
    attention. A page already queued or rendering is skipped (``renders.services.pages_enqueue``
    decides, under a row lock), and who asked is recorded in its ``job_metadata["requests"]``.
    ``admin`` marks a support rerun (``admin:<id>``, reason ``admin_rerun``). Page numbers the
    book does not have raise RegenerateError before anything is queued."""
    pages = book.pages.order_by("number")
    if page_numbers:
        wanted = sorted(set(page_numbers))
        found = dict(pages.filter(number__in=wanted).values_list("number", "pk"))
        missing = [number for number in wanted if number not in found]
        if missing:
            verb = "does" if len(missing) == 1 else "do"
            raise RegenerateError(
                f"{_pages_phrase(missing).capitalize()} {verb} not exist: "
                f"“{book.title}” has pages 1 to {pages.aggregate(last=Max('number'))['last'] or 0}."
            )
    else:
        found = dict(pages.filter(status=Status.FAILED).values_list("number", "pk"))
    by_label = f"{'admin' if admin else 'user'}:{by.pk}"
    reason = "admin_rerun" if admin else "regenerate"
    queued: list[int] = []
    skipped: dict[int, str] = {}
    numbers = sorted(found)
    results = pages_enqueue(page_ids=[found[number] for number in numbers], by=by_label, reason=reason)
    for number, result in zip(numbers, results, strict=True):
        if result.queued:
            queued.append(number)
        else:
            skipped[number] = result.reason
    return RegenerateResult(queued=queued, skipped=skipped)


def regenerate_throttle(*, user: User) -> int:
    """Count one regenerate request of ``user``. Returns 0 while the user is within
    REGENERATE_LIMIT requests per REGENERATE_WINDOW_SEC, else the seconds until they may ask again."""
    return rate_limit_hit(f"regenerate:{user.pk}", limit=REGENERATE_LIMIT, window_sec=REGENERATE_WINDOW_SEC)


def book_create_throttle(*, user: User) -> int:
    """Count one new book of ``user``: 0 within BOOKRENDER_NEW_BOOKS_PER_HOUR, else the seconds to
    wait. A book is up to MAX_PAGES renders, so this bounds what one account can queue."""
    limit = settings.BOOKRENDER_NEW_BOOKS_PER_HOUR
    if limit == 0:
        return 0
    return rate_limit_hit(f"book-create:{user.pk}", limit=limit, window_sec=BOOK_CREATE_WINDOW_SEC)


def _pages_phrase(numbers: list[int], *, most: int = 8) -> str:
    """Page numbers in words: page 3; pages 3 and 5; pages 1, 2 and 7; pages 1, 2, ... and 40 more."""
    if len(numbers) == 1:
        return f"page {numbers[0]}"
    shown = [str(n) for n in numbers[:most]]
    if len(numbers) > most:
        return f"pages {', '.join(shown)} and {len(numbers) - most} more"
    return f"pages {', '.join(shown[:-1])} and {shown[-1]}"


# --- owners fix their books: edit, add, delete, reorder pages; duplicate and delete books -------------


class PageEditError(ValueError):
    """A page change that cannot be made; nothing was changed. ``errors`` maps a field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def page_spec_check(
    *, book: Book, prompt: str, negative_prompt: str, overrides: dict[str, Any]
) -> tuple[dict[str, str], dict[str, Value]]:
    """The problems of a page's settings, by field (empty when there are none), and its
    overrides checked against the book's workflow version."""
    errors: dict[str, str] = {}
    checked: dict[str, Value] = {}
    if problem := prompt_problem(prompt):
        errors["prompt"] = problem
    if len(negative_prompt) > MAX_PROMPT_CHARS:
        errors["negative_prompt"] = f"the negative prompt is longer than {MAX_PROMPT_CHARS} characters"
    try:
        checked = page_overrides_check(version=book.workflow_version, fixed=book.style.overrides, overrides=overrides)
    except PropertyValuesError as exc:
        errors.update(exc.errors)
    return errors, checked


def page_edit(
    *,
    page: BookPage,
    by: User,
    prompt: str,
    negative_prompt: str,
    overrides: dict[str, Any],
    input_image: str | None = None,
) -> RegenerateResult:
    """Change a Done, failed or cancelled page's prompt, negative prompt, seed and size, then render it again
    through ``book_regenerate``. A pending or rendering page is refused: its attempt already read
    the old settings. ``overrides`` holds only the values the owner set (the workflow's defaults
    fill the rest). ``input_image``: a stored input's name (books.inputs), "" to remove the
    page's, None to keep it."""
    from books.inputs import input_images_delete_unused

    errors, overrides = page_spec_check(
        book=page.book, prompt=prompt, negative_prompt=negative_prompt, overrides=overrides
    )
    if errors:
        raise PageEditError(errors)
    fields: dict[str, Any] = {
        "prompt": prompt.strip(),
        "negative_prompt": negative_prompt.strip(),
        "overrides": overrides,
    }
    old_input = str(page.input_image.name or "")
    if input_image is not None:
        fields["input_image"] = input_image
    with transaction.atomic():
        changed = BookPage.objects.filter(pk=page.pk, status__in=(Status.DONE, Status.FAILED, Status.CANCELLED)).update(
            **fields
        )
        if not changed:
            raise PageEditError({"page": f"page {page.number} is being rendered; edit it once it has finished"})
        if input_image is not None and old_input != input_image:
            transaction.on_commit(lambda: input_images_delete_unused([old_input]), robust=True)
        return book_regenerate(book=page.book, by=by, page_numbers=[page.number])


def page_add(*, book: Book, by: User, spec: PageSpec) -> BookPage:
    """Add a page at the end of the book and queue it."""
    errors, overrides = page_spec_check(
        book=book, prompt=spec.prompt, negative_prompt=spec.negative_prompt, overrides=spec.overrides
    )
    if errors:
        raise PageEditError(errors)
    with transaction.atomic():
        Book.objects.select_for_update().filter(pk=book.pk).first()  # one page number per add
        count = book.pages.count()
        if count >= MAX_PAGES:
            raise PageEditError({"page": f"a book has at most {MAX_PAGES} pages"})
        last = book.pages.aggregate(last=Max("number"))["last"] or 0
        page = BookPage.objects.create(
            book=book,
            number=last + 1,
            prompt=spec.prompt.strip(),
            negative_prompt=spec.negative_prompt.strip(),
            overrides=overrides,
            input_image=spec.input_image,
        )
        pages_enqueue(page_ids=[page.pk], by=f"user:{by.pk}", reason="add")
    page.refresh_from_db()
    return page


# Page numbers are unique per book; a renumbering first moves the pages out of the way by this much.
_RENUMBER_OFFSET = 1_000_000


def page_delete(*, page: BookPage) -> None:
    """Delete a page that is not rendering, and its image; the pages after it move up one."""
    from books.images import page_files_delete
    from books.inputs import input_images_delete_unused

    with transaction.atomic():
        Book.objects.select_for_update().filter(pk=page.book_id).first()
        versions = [name for name in page.versions.values_list("image", flat=True) if name]
        deleted, _ = BookPage.objects.filter(pk=page.pk).exclude(status=Status.RENDERING).delete()
        if not deleted:
            raise PageEditError({"page": f"page {page.number} is being rendered; delete it once it has finished"})
        later = BookPage.objects.filter(book_id=page.book_id, number__gt=page.number)
        later.update(number=F("number") + _RENUMBER_OFFSET)
        BookPage.objects.filter(book_id=page.book_id, number__gt=_RENUMBER_OFFSET).update(
            number=F("number") - _RENUMBER_OFFSET - 1
        )
        transaction.on_commit(lambda: page_files_delete(page, versions=versions))
        transaction.on_commit(lambda: input_images_delete_unused([page.input_image.name or ""]), robust=True)


def page_move(*, page: BookPage, by: int) -> int:
    """Swap a page with the one ``by`` places after it (-1: earlier, 1: later). Returns its new
    number; a page already first or last stays where it is."""
    with transaction.atomic():
        Book.objects.select_for_update().filter(pk=page.book_id).first()
        current = BookPage.objects.get(pk=page.pk)
        other = BookPage.objects.filter(book_id=page.book_id, number=current.number + by).first()
        if other is None:
            return current.number
        BookPage.objects.filter(pk=current.pk).update(number=current.number + _RENUMBER_OFFSET)
        BookPage.objects.filter(pk=other.pk).update(number=current.number)
        BookPage.objects.filter(pk=current.pk).update(number=other.number)
        return other.number


def book_duplicate(*, book: Book, by: User) -> Book:
    """A new book of ``by`` with the same title (marked as a copy), style, values and pages,
    queued. It keeps the original's workflow version and values even if the style has moved on."""
    title = f"{book.title} (copy)"
    if len(title) > 200:
        title = book.title[: 200 - len("… (copy)")] + "… (copy)"
    pages = [
        PageSpec(
            prompt=page.prompt,
            negative_prompt=page.negative_prompt,
            overrides=page.overrides,
            input_image=page.input_image.name or "",
        )
        for page in book.pages.order_by("number")
    ]
    with transaction.atomic():
        copy = Book.objects.create(
            owner=by, title=title, style=book.style, workflow_version=book.workflow_version, values=book.values
        )
        BookPage.objects.bulk_create(
            BookPage(
                book=copy,
                number=number,
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                overrides=spec.overrides,
                input_image=spec.input_image,
            )
            for number, spec in enumerate(pages, start=1)
        )
        page_ids = list(copy.pages.order_by("number").values_list("pk", flat=True))
        pages_enqueue(page_ids=page_ids, by=f"user:{by.pk}", reason="create")
    return copy


def book_delete(*, book: Book) -> None:
    """Delete a book, its pages and their files (every image and thumbnail, old attempts' too).
    The files go after the commit: a rollback keeps them. A worker still rendering one of its
    pages finds the page gone and deletes the image it made (see ``renders.services.page_finish``)."""
    from books.images import book_files_delete
    from books.inputs import input_images_delete_unused

    book_id = book.pk
    with transaction.atomic():
        inputs = [page.input_image.name for page in book.pages.all() if page.input_image.name]
        transaction.on_commit(lambda: input_images_delete_unused(inputs), robust=True)
        names = [page.image.name for page in book.pages.all() if page.image.name]
        names += [name for name in PageVersion.objects.filter(page__book=book).values_list("image", flat=True) if name]
        book.delete()
        transaction.on_commit(lambda: book_files_delete(book_id=book_id, names=names))


def book_cancel(*, book: Book, by: User, page_numbers: list[int] | None = None) -> list[int]:
    """Stop the named pages of a book, or every page still pending or rendering; returns the numbers
    stopped. A rendering page's prompt is cancelled on ComfyUI by the worker that renders it (it
    finds its attempt superseded), so the GPU stops working for nobody."""
    from renders.services import pages_cancel

    pages = book.pages.all()
    if page_numbers:
        pages = pages.filter(number__in=page_numbers)
    ids = dict(pages.values_list("pk", "number"))
    stopped = pages_cancel(page_ids=list(ids), by=f"user:{by.pk}")
    return sorted(ids[page_id] for page_id in stopped)


def page_version_pick(*, book: Book, number: int, attempt: int) -> BookPage:
    """Show an earlier (or later) version of a page instead of the one shown now."""
    from renders.services import page_version_choose

    page = book.pages.get(number=number)
    version = PageVersion.objects.get(page=page, attempt=attempt)
    page_version_choose(page=page, version=version)
    page.refresh_from_db()
    return page
