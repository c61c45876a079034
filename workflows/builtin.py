"""The built-in workflows (renders/workflow_templates/*.json) as registry rows: one workflow, its
first version and one style of the same slug each. Used by the data migration that introduced the
registry (with its historical models) and after every migrate (a flush empties the tables)."""

from __future__ import annotations

from typing import Any

from renders.workflows import BUILTIN_DIR, workflow_load_dir


def builtins_ensure(*, Workflow: Any, WorkflowVersion: Any, Style: Any) -> None:
    """Register each built-in template whose slug is not registered yet; never changes one that
    is (an admin may have deactivated it, or added versions)."""
    templates, errors = workflow_load_dir(BUILTIN_DIR)
    if errors:
        raise RuntimeError("; ".join(map(str, errors)))
    # The plain model-free style comes first (the form's default: it runs on any ComfyUI), then the
    # others by name.
    templates.sort(key=lambda template: (template.slug != "model-free", template.slug))
    for position, template in enumerate(templates, start=1):
        if Workflow.objects.filter(slug=template.slug).exists():
            continue
        workflow = Workflow.objects.create(
            name=template.title, slug=template.slug, description=template.description, is_active=True
        )
        version = WorkflowVersion.objects.create(
            workflow=workflow,
            number=1,
            graph=template.graph,
            output_node=template.output_node,
            output_ext=template.output_ext,
            output_mime=template.output_mime,
            properties=template.properties_json,
            notes=f"Built in: renders/workflow_templates/{template.slug}.json",
        )
        if not Style.objects.filter(slug=template.slug).exists():
            Style.objects.create(
                name=template.title,
                slug=template.slug,
                description=template.description,
                version=version,
                position=position * 10,
            )
