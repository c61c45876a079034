"""The books world: alice owns "The Fox" (three pages), bob is another user, root is staff."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from books.models import Book, BookPage
from books.services import PageSpec, book_create

Status = BookPage.Status

OOM_ERROR = {
    "attempt": 2,
    "kind": "oom",
    "message": "ComfyUI ran out of GPU memory on node 12 (KSampler): Allocation on device",
    "node_id": "12",
    "node_type": "KSampler",
    "exception_type": "torch.OutOfMemoryError",
    "instance": "http://127.0.0.1:8188",
    "at": "2026-01-01T10:00:00+00:00",
}


@pytest.fixture(autouse=True)
def _fresh_rate_limit() -> Iterator[None]:
    """The regenerate rate limit counts in the cache; every test starts with none used."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def book(alice: User) -> Book:
    """alice's book; its pages are queued (their Celery messages go out only after commit, which
    never comes inside a test's transaction)."""
    return book_create(
        owner=alice,
        title="The Fox",
        style="model-free",
        pages=[PageSpec("A fox at dawn"), PageSpec("A heron in fog"), PageSpec("A boat under stars")],
    )


def page_set(book: Book, number: int, status: str, **fields: Any) -> BookPage:
    """Put a page in a state, as the pipeline would have left it."""
    defaults: dict[str, Any] = {"last_attempted_at": timezone.now()}
    if status == Status.FAILED:
        defaults.update(needs_regeneration=True, image_error=[OOM_ERROR], retry_count=1, attempt=2)
    BookPage.objects.filter(book=book, number=number).update(status=status, **{**defaults, **fields})
    return BookPage.objects.get(book=book, number=number)


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice: User) -> Client:
    return client_for(alice)


@pytest.fixture
def bob_client(bob: User) -> Client:
    return client_for(bob)


@pytest.fixture
def root_client(admin_user: User) -> Client:
    return client_for(admin_user)


@pytest.fixture
def helpdesk(db: None) -> User:
    """Staff who may look at pages in the admin but not change them."""
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("helpdesk", password="helpdesk-password", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_book", "view_bookpage", "view_renderattempt"])
    )
    return user
