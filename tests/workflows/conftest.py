"""The books world's signed-in clients, for the admin and the forms."""

from __future__ import annotations

from tests.books.conftest import alice_client, root_client

__all__ = ["alice_client", "root_client"]
