from __future__ import annotations

from django.apps import AppConfig


class RendersConfig(AppConfig):
    name = "renders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from renders import checks  # noqa: F401  (registers the system checks)
