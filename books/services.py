"""What people do with books: create one, regenerate pages. Views, admin actions and management
commands all call these; the render pipeline itself lives in renders/services.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max

from books.models import Book, BookPage
from books.ratelimit import rate_limit_hit
from renders.services import pages_enqueue
from renders.workflows import MAX_SIZE, MIN_SIZE, WorkflowError, workflow_get

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
    overrides: dict[str, int] = field(default_factory=dict)


def pages_from_json(data: Any) -> list[PageSpec]:
    """Pages from an uploaded JSON document: a list of prompts, or of objects
    ``{"prompt", "negative_prompt"?, "width"?, "height"?, "seed"?}``, or ``{"pages": [...]}``."""
    if isinstance(data, dict) and "pages" in data:
        data = data["pages"]
    if not isinstance(data, list):
        raise BookInputError({"pages": "expected a list of pages, or an object with a 'pages' list"})
    if len(data) > MAX_PAGES:
        raise BookInputError({"pages": f"{len(data)} pages is more than the limit of {MAX_PAGES} per book"})
    specs: list[PageSpec] = []
    errors: dict[str, str] = {}
    for number, item in enumerate(data, start=1):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            errors[f"page {number}"] = "expected a prompt string or an object with a 'prompt'"
            continue
        unknown = set(item) - {"prompt", "negative_prompt", "width", "height", "seed"}
        if unknown:
            errors[f"page {number}"] = f"unknown field {', '.join(sorted(unknown))}"
            continue
        overrides: dict[str, int] = {}
        for key in ("width", "height", "seed"):
            if key in item:
                value = item[key]
                low, high = (0, 2**32 - 1) if key == "seed" else (MIN_SIZE, MAX_SIZE)
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                    errors[f"page {number}"] = f"{key} must be a whole number from {low} to {high}"
                    break
                overrides[key] = value
        else:
            specs.append(
                PageSpec(
                    prompt=str(item.get("prompt", "")),
                    negative_prompt=str(item.get("negative_prompt") or ""),
                    overrides=overrides,
                )
            )
    if errors:
        raise BookInputError(errors)
    return specs


def pages_from_text(text: str) -> list[PageSpec]:
    """One page per paragraph (paragraphs are separated by blank lines)."""
    paragraphs = [" ".join(block.split()) for block in text.replace("\r\n", "\n").split("\n\n")]
    return [PageSpec(prompt=p) for p in paragraphs if p]


def book_create(*, owner: User, title: str, workflow: str, pages: list[PageSpec]) -> Book:
    """Create a book and queue every page."""
    errors: dict[str, str] = {}
    if not title.strip():
        errors["title"] = "a book needs a title"
    elif len(title) > 200:
        errors["title"] = "at most 200 characters"
    try:
        workflow_get(workflow)
    except WorkflowError as exc:
        errors["workflow"] = str(exc)
    if not pages:
        errors["pages"] = "a book needs at least one page"
    elif len(pages) > MAX_PAGES:
        errors["pages"] = f"{len(pages)} pages is more than the limit of {MAX_PAGES} per book"
    for number, spec in enumerate(pages[:MAX_PAGES], start=1):
        if not spec.prompt.strip():
            errors[f"page {number}"] = "the prompt is empty"
        elif len(spec.prompt) > MAX_PROMPT_CHARS:
            errors[f"page {number}"] = f"the prompt is longer than {MAX_PROMPT_CHARS} characters"
    if errors:
        raise BookInputError(errors)
    with transaction.atomic():
        book = Book.objects.create(owner=owner, title=title.strip(), workflow=workflow)
        BookPage.objects.bulk_create(
            BookPage(
                book=book,
                number=number,
                prompt=spec.prompt.strip(),
                negative_prompt=spec.negative_prompt.strip(),
                overrides=spec.overrides,
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
                f"{book.title!r} has pages 1 to {pages.aggregate(last=Max('number'))['last'] or 0}."
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
