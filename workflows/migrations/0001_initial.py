from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Workflow",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                ("slug", models.SlugField(max_length=64, unique=True)),
                ("description", models.TextField(blank=True, default="")),
                ("is_active", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.CreateModel(
            name="WorkflowVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("number", models.PositiveIntegerField()),
                ("graph", models.JSONField()),
                (
                    "output_node",
                    models.CharField(help_text="The id of the node whose output is the page.", max_length=32),
                ),
                ("output_ext", models.CharField(default="png", max_length=8)),
                ("output_mime", models.CharField(default="image/png", max_length=64)),
                ("properties", models.JSONField()),
                ("checked_on", models.CharField(blank=True, default="", max_length=255)),
                ("notes", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "workflow",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="versions", to="workflows.workflow"
                    ),
                ),
            ],
            options={
                "ordering": ["workflow", "-number"],
                "constraints": [
                    models.UniqueConstraint(fields=("workflow", "number"), name="workflow_version_unique_number")
                ],
            },
        ),
        migrations.CreateModel(
            name="Style",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
                ("slug", models.SlugField(max_length=64, unique=True)),
                ("description", models.TextField(blank=True, default="")),
                ("preview", models.ImageField(blank=True, max_length=255, upload_to="styles/")),
                ("overrides", models.JSONField(blank=True, default=dict)),
                ("is_active", models.BooleanField(default=True)),
                ("position", models.PositiveSmallIntegerField(default=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="styles",
                        to="workflows.workflowversion",
                    ),
                ),
            ],
            options={"ordering": ["position", "name"]},
        ),
    ]
