"""Claims: the fencing token a worker holds while it renders a page, and the thread that keeps its
lease alive for the whole task.

A claim is (page, attempt, token). ``page_claim`` writes a fresh token into the page row; every
later change the worker makes (renew, finish, fail, defer, hand back, slot renew and release)
checks it. When the sweeper hands a page whose lease lapsed to another worker, the token changes,
and the first worker, slow but alive, finds out at its next step and walks away.

The lease is renewed by a thread of the worker process, every ``COMFY_LEASE_SEC / 3``, whatever
the task is doing: a blocking HTTP call, a WebSocket connect or a wait for a slot never lets the
lease of a live worker lapse. The thread keeps its own database connection while it holds claims
and closes it when it holds none.

Lease and due times are the database's clock (``db_now``, ``Now()``), never a host's own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now

if TYPE_CHECKING:
    from books.models import BookPage

log = logging.getLogger("bookrender.lease")


class Superseded(Exception):
    """A newer attempt replaced this one (a regenerate, an admin rerun): stop and cancel its prompt."""


class ClaimLost(Exception):
    """The same attempt now belongs to another claim (the sweeper handed the page on after this
    worker's lease lapsed): walk away and cancel nothing, the new holder re-attaches to the prompt."""


@dataclass(eq=False)
class Claim:
    page: BookPage
    attempt: int
    token: uuid.UUID | None
    # Set by the lease thread when a renewal finds the claim gone; raised by ``check``.
    lost: Exception | None = field(default=None)

    @property
    def page_id(self) -> int:
        return int(self.page.pk)

    def check(self) -> None:
        """Raise Superseded or ClaimLost if the lease thread found that this claim is gone."""
        if self.lost is not None:
            raise self.lost


def renew_interval() -> float:
    return float(settings.COMFY_LEASE_SEC) / 3


def db_in(seconds: float) -> Any:
    """``now() + seconds`` on the database's clock, for use in an UPDATE."""
    return ExpressionWrapper(Now() + timedelta(seconds=seconds), output_field=DateTimeField())


def db_now() -> datetime:
    """The database's current time."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        value = cursor.fetchone()[0]
    if isinstance(value, str):  # SQLite answers text, in UTC
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value


class LeaseKeeper:
    """One per worker process: a daemon thread that renews the lease of every claim held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, tuple[Claim, Callable[[Claim], None], float]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def hold(self, claim: Claim, renew: Callable[[Claim], None]) -> Iterator[Claim]:
        with self._lock:
            self._held[id(claim)] = (claim, renew, time.monotonic() + renew_interval())
            self._ensure_thread()
        self._wake.set()
        try:
            yield claim
        finally:
            with self._lock:
                self._held.pop(id(claim), None)

    def _ensure_thread(self) -> None:
        # A forked pool process inherits the object but not the thread: start one of its own.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                held = list(self._held.items())
            if not held:
                connection.close()  # hold no connection between tasks (tests drop the database)
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            now = time.monotonic()
            for key, (claim, renew, due) in held:
                if now < due or claim.lost is not None:
                    continue
                next_due = now + renew_interval()
                try:
                    renew(claim)
                except (Superseded, ClaimLost) as exc:
                    claim.lost = exc
                except DatabaseError as exc:
                    log.warning("lease renewal failed: %s", exc)
                    connection.close()
                    next_due = now + 0.5  # try again soon; the lease has time left
                except Exception:  # never let the thread die: the lease would lapse silently
                    log.exception("lease renewal failed")
                    next_due = now + 0.5
                with self._lock:
                    if key in self._held:
                        self._held[key] = (claim, renew, next_due)
            self._wake.wait(0.1)
            self._wake.clear()


KEEPER = LeaseKeeper()
