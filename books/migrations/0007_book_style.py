"""Books move from a workflow slug (a template file) to the registry: each book gets the style of
that slug and its workflow's first version, which is the template it was rendering with.

A book whose slug is not a built-in came from BOOKRENDER_WORKFLOWS_DIR: its template is registered
from that folder here, so set the variable for this migration (it is not read after it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def to_registry(apps: Any, schema_editor: Any) -> None:
    from renders.workflows import workflow_load_dir
    from workflows.builtin import builtins_ensure

    Book = apps.get_model("books", "Book")
    Workflow = apps.get_model("workflows", "Workflow")
    WorkflowVersion = apps.get_model("workflows", "WorkflowVersion")
    Style = apps.get_model("workflows", "Style")
    builtins_ensure(Workflow=Workflow, WorkflowVersion=WorkflowVersion, Style=Style)
    slugs = set(Book.objects.values_list("workflow", flat=True))
    missing = slugs - set(Style.objects.values_list("slug", flat=True))
    extra_dir = os.environ.get("BOOKRENDER_WORKFLOWS_DIR", "")
    if missing and extra_dir:
        templates, _errors = workflow_load_dir(Path(extra_dir))
        for template in templates:
            if template.slug not in missing:
                continue
            workflow = Workflow.objects.create(name=template.title, slug=template.slug, description=template.description)
            version = WorkflowVersion.objects.create(
                workflow=workflow,
                number=1,
                graph=template.graph,
                output_node=template.output_node,
                output_ext=template.output_ext,
                output_mime=template.output_mime,
                properties=template.properties_json,
                notes=f"Imported from {template.path} when books moved to the registry",
            )
            Style.objects.create(name=template.title, slug=template.slug, description=template.description, version=version)
        missing = slugs - set(Style.objects.values_list("slug", flat=True))
    if missing:
        raise RuntimeError(
            f"books use workflows that are not built in: {', '.join(sorted(missing))}. Set "
            f"BOOKRENDER_WORKFLOWS_DIR to the folder that holds their .json templates and migrate again."
        )
    for style in Style.objects.filter(slug__in=slugs):
        Book.objects.filter(workflow=style.slug).update(style=style, workflow_version=style.version)


class Migration(migrations.Migration):
    dependencies = [("books", "0006_page_input_image"), ("workflows", "0002_builtin_workflows")]

    operations = [
        migrations.AddField(
            model_name="book",
            name="style",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, related_name="books", to="workflows.style"
            ),
        ),
        migrations.AddField(
            model_name="book",
            name="workflow_version",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="books",
                to="workflows.workflowversion",
            ),
        ),
        migrations.AddField(model_name="book", name="values", field=models.JSONField(blank=True, default=dict)),
        migrations.RunPython(to_registry, migrations.RunPython.noop),
    ]
