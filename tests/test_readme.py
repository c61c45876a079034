from __future__ import annotations

from pathlib import Path

from config import env

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_documents_every_variable_settings_read():
    missing = [name for name in env.KNOWN if f"`{name}`" not in README]
    assert missing == []


def test_the_readme_starts_with_the_two_commands():
    first_block = README.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block
