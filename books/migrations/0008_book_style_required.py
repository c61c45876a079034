"""Every book has its style and version now (0006); the workflow slug goes."""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    # Its own migration: PostgreSQL refuses ALTER TABLE on rows the data migration just updated
    # in the same transaction ("pending trigger events").
    dependencies = [("books", "0007_book_style")]

    operations = [
        migrations.AlterField(
            model_name="book",
            name="style",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="books", to="workflows.style"
            ),
        ),
        migrations.AlterField(
            model_name="book",
            name="workflow_version",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="books", to="workflows.workflowversion"
            ),
        ),
        migrations.RemoveField(model_name="book", name="workflow"),
    ]
