from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class WorkflowsConfig(AppConfig):
    name = "workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_builtins_after_migrate, sender=self)


def _builtins_after_migrate(sender: Any, **kwargs: Any) -> None:
    # The data migration registers the built-in workflows once; this puts back any that a flush
    # removed (a test database between tests, `manage.py flush`), as Django does for permissions.
    from workflows.builtin import builtins_ensure
    from workflows.models import Style, Workflow, WorkflowVersion

    builtins_ensure(Workflow=Workflow, WorkflowVersion=WorkflowVersion, Style=Style)
