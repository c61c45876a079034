from __future__ import annotations

from django.apps import AppConfig


class RendersConfig(AppConfig):
    name = "renders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import pre_delete

        from books.models import Book, BookPage
        from renders import checks  # noqa: F401  (registers the system checks)
        from renders.metrics import retire_on_delete
        from renders.models import RenderAttempt

        # Deleting a book must not make a /metrics counter go down (renders.metrics.RetiredCount).
        for model in (Book, BookPage, RenderAttempt):
            pre_delete.connect(retire_on_delete, sender=model, dispatch_uid=f"retire-{model.__name__}")
