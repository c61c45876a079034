"""Books made before the registry keep rendering: the migration gives each the style of its
workflow slug and that workflow's first version (its template as it was)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from books.models import Book
from renders.checks import check_workflows
from workflows.services import page_graph

BEFORE = [("books", "0006_page_input_image"), ("workflows", "0002_builtin_workflows")]


@pytest.mark.django_db(transaction=True)
def test_books_made_before_the_registry_get_their_workflows_style_and_first_version():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps
        owner = old.get_model("auth", "User").objects.create(username="early")
        book = old.get_model("books", "Book").objects.create(owner=owner, title="Early", workflow="sdxl")
        old.get_model("books", "BookPage").objects.create(
            book=book, number=1, uid=uuid.uuid4(), prompt="a fox", overrides={"width": 512}
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    migrated = Book.objects.get(title="Early")
    assert (migrated.style.slug, str(migrated.workflow_version), migrated.values) == ("sdxl", "sdxl v1", {})
    filled = page_graph(migrated.pages.get(), seed=3, filename_prefix="p")
    assert filled.graph["5"]["inputs"] == {"width": 512, "height": 1024, "batch_size": 1}
    assert filled.graph["6"]["inputs"]["text"] == "a fox" and filled.graph["3"]["inputs"]["seed"] == 3


def test_a_broken_built_in_template_stops_start_up_by_name(monkeypatch, tmp_path: Path):
    (tmp_path / "broken.json").write_text('{"prompt": {')
    monkeypatch.setattr("renders.workflows.BUILTIN_DIR", tmp_path)
    [message] = check_workflows(None)
    assert message.id == "renders.E003" and "'broken'" in message.msg and "not valid JSON" in message.msg
