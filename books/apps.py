from __future__ import annotations

from django.apps import AppConfig


class BooksConfig(AppConfig):
    name = "books"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from books import notifications

        notifications.connect()
