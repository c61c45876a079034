"""The built-in templates (renders/workflow_templates/*.json) become registry rows."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def seed(apps: Any, schema_editor: Any) -> None:
    from workflows.builtin import builtins_ensure

    builtins_ensure(
        Workflow=apps.get_model("workflows", "Workflow"),
        WorkflowVersion=apps.get_model("workflows", "WorkflowVersion"),
        Style=apps.get_model("workflows", "Style"),
    )


class Migration(migrations.Migration):
    dependencies = [("workflows", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
