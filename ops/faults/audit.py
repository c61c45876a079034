"""The bookkeeping every fault scenario (and the load test) ends with: no page lost, no page with
two committed images for one attempt, every page Done or Needs attention with a structured error.

Reads the database, the media folder and what the ComfyUI simulators say they were sent; returns
the problems found as sentences, an empty list when the books are sound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ERROR_FIELDS = ("attempt", "kind", "message", "instance", "at")


def audit_books(
    *,
    book_ids: Iterable[int],
    media_root: Path,
    submissions: dict[str, int] | None = None,
    expected_pages: dict[int, int] | None = None,
) -> list[str]:
    """Every problem with these books, as "book 3 page 2: ..." sentences.

    1. No page lost: every page is Done or Needs attention, and each book has the pages it was
       created with (``expected_pages``: book id -> page count).
    2. A Done page has its image, named for the attempt that made it, and that attempt succeeded;
       the media folder holds exactly the files of the page's versions (one per successful
       attempt): any other file was written by a superseded or lost claim and left behind. A page
       never regenerated has one successful attempt at most.
    3. A page that Needs attention is flagged needs_regeneration, keeps only the images of its
       earlier versions (a failed regenerate hides no good image), and its errors are structured
       entries with a known kind.
    4. Every failed attempt is counted: retry_count equals the number of error entries.
    5. ComfyUI was sent each attempt's prompt once at most (``submissions``: prompt id -> times
       received, from the simulators), and nothing it was sent is unknown to the database.
    6. No attempt is still marked running once its page has settled.
    """
    from books.models import Book, BookPage, PageVersion
    from renders.comfy import ErrorKind
    from renders.models import RenderAttempt
    from renders.services import page_image_prefix

    kinds = {str(kind) for kind in ErrorKind}
    problems: list[str] = []
    ids = list(book_ids)
    known_prompts: set[str] = set()
    found_books = set(Book.objects.filter(pk__in=ids).values_list("pk", flat=True))
    for book_id in ids:
        if book_id not in found_books:
            problems.append(f"book {book_id}: missing from the database")
    for book_id, count in (expected_pages or {}).items():
        have = BookPage.objects.filter(book_id=book_id).count()
        if have != count:
            problems.append(f"book {book_id}: {have} pages, created with {count}")

    pages = BookPage.objects.filter(book_id__in=ids).order_by("book_id", "number")
    attempts_by_page: dict[int, list[Any]] = {}
    for attempt in RenderAttempt.objects.filter(page__book_id__in=ids).order_by("number"):
        attempts_by_page.setdefault(attempt.page_id, []).append(attempt)
        known_prompts.add(str(attempt.prompt_id))

    for page in pages:
        where = f"book {page.book_id} page {page.number}"
        attempts = attempts_by_page.get(page.pk, [])
        folder = media_root / "pages" / f"book-{page.book_id}"
        files = sorted(f.name for f in folder.glob(f"page-{page.number:04d}-{page.uid.hex[:12]}-attempt-*"))
        successes = [a for a in attempts if a.outcome == RenderAttempt.Outcome.SUCCESS]
        regenerated = bool(page.job_metadata.get("requests"))

        if page.status not in (BookPage.Status.DONE, BookPage.Status.FAILED):
            problems.append(f"{where}: lost, still {page.get_status_display()} (attempt {page.attempt})")
        versions = sorted(Path(v).name for v in PageVersion.objects.filter(page=page).values_list("image", flat=True))
        if files != versions:
            problems.append(f"{where}: image files {files}, but its versions are {versions}")
        image = str(page.image.name or "")
        if page.status == BookPage.Status.DONE:
            prefix = page_image_prefix(page, page.image_attempt or 0)
            if not image.startswith(prefix):
                problems.append(f"{where}: Done, but its image {image!r} is not attempt {page.image_attempt}'s")
            elif Path(image).name not in files:
                problems.append(f"{where}: Done, but its image file {image} does not exist")
            if not any(a.number == page.image_attempt for a in successes):
                problems.append(f"{where}: its image is from attempt {page.image_attempt}, which did not succeed")
        if page.status == BookPage.Status.FAILED:
            if not page.needs_regeneration:
                problems.append(f"{where}: Needs attention but not flagged needs_regeneration")
            if image and Path(image).name not in versions:
                problems.append(f"{where}: Needs attention with an image {image} that is no version")
            latest = page.latest_error
            if not isinstance(latest, dict):
                problems.append(f"{where}: Needs attention without an error")
        if len(successes) > 1 and not regenerated:
            numbers = [a.number for a in successes]
            problems.append(f"{where}: {len(successes)} successful attempts {numbers} but never regenerated")
        for entry in page.image_error:
            if not isinstance(entry, dict) or any(key not in entry for key in ERROR_FIELDS):
                problems.append(f"{where}: an error entry is not structured: {entry!r:.200}")
            elif entry["kind"] not in kinds:
                problems.append(f"{where}: an error entry has unknown kind {entry['kind']!r}")
        if page.retry_count != len(page.image_error):
            problems.append(f"{where}: retry_count {page.retry_count} but {len(page.image_error)} errors recorded")
        settled = page.status in (BookPage.Status.DONE, BookPage.Status.FAILED)
        for attempt in attempts:
            if settled and attempt.outcome == RenderAttempt.Outcome.RUNNING:
                problems.append(f"{where}: attempt {attempt.number} still marked running")
            sent = (submissions or {}).get(str(attempt.prompt_id), 0)
            if sent > 1:
                problems.append(f"{where}: attempt {attempt.number} was submitted to ComfyUI {sent} times")

    for prompt_id, sent in sorted((submissions or {}).items()):
        if prompt_id not in known_prompts and sent:
            problems.append(f"prompt {prompt_id}: sent to ComfyUI but no attempt of these books has it")
    return problems


@dataclass
class SubmissionLedger:
    """Counts what each simulator was sent, across its restarts: a killed simulator's counts die
    with it, so its /sim/stats are read every ``interval`` and the last reading of each process
    is kept (and read once more right before a deliberate kill: ``snapshot``)."""

    simulators: list[Any]
    interval: float = 0.25
    _by_process: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SubmissionLedger:
        self._thread = threading.Thread(target=self._loop, name="submission-ledger", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.snapshot()

    def snapshot(self) -> None:
        for sim in self.simulators:
            try:
                stats = sim.stats()
            except Exception:  # down or restarting: its last reading stands
                continue
            with self._lock:
                self._by_process[(sim.url, int(stats["pid"]))] = dict(stats["submissions"])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.snapshot()

    def submissions(self) -> dict[str, int]:
        """Prompt id -> times it was accepted by POST /prompt, summed over every simulator process."""
        total: dict[str, int] = {}
        with self._lock:
            for counts in self._by_process.values():
                for prompt_id, n in counts.items():
                    total[prompt_id] = total.get(prompt_id, 0) + n
        return total


def wait_settled(book_ids: Iterable[int], *, timeout: float, interval: float = 0.2) -> bool:
    """Wait until no page of these books is Pending or Rendering; False on timeout."""
    from books.models import BookPage

    ids = list(book_ids)
    deadline = time.monotonic() + timeout
    active = (BookPage.Status.QUEUED, BookPage.Status.RENDERING)
    while BookPage.objects.filter(book_id__in=ids, status__in=active).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
