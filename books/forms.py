"""The New book form: it turns what a person typed or uploaded into page specs; ``book_create``
then decides whether they make a book, and its errors come back onto the form's fields."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from books.services import MAX_PAGES, BookInputError, PageSpec, pages_from_json, pages_from_text
from renders.workflows import workflow_choices

# 500 pages of 4,000 characters is 2 MB of prompts; twice that leaves room for JSON around them.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


class BookForm(forms.Form):
    title = forms.CharField(max_length=200, error_messages={"required": "A book needs a title."})
    workflow = forms.ChoiceField(choices=workflow_choices)
    text = forms.CharField(
        label="Pages",
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "placeholder": "A lighthouse on a cliff at dawn\n\nA fox …"}),
        help_text=f"One prompt per paragraph: leave a blank line between pages (at most {MAX_PAGES}).",
    )
    upload = forms.FileField(
        label="Or a JSON file",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
        help_text='A list of prompts, or of objects {"prompt", "negative_prompt", "width", "height", "seed"}.',
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages: list[PageSpec] = []
        # "page 3" -> message, shown as a list under the pages field.
        self.page_errors: dict[str, str] = {}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        text, upload = cleaned.get("text") or "", cleaned.get("upload")
        if text.strip() and upload:
            self.add_error("upload", "Give the pages as text or as a JSON file, not both.")
        elif upload:
            self.pages = self._pages_from_upload(upload)
        elif text.strip():
            self.pages = pages_from_text(text)
        elif "text" not in self.errors:
            self.add_error("text", "A book needs at least one page.")
        return cleaned

    def _pages_from_upload(self, upload: Any) -> list[PageSpec]:
        if upload.size > MAX_UPLOAD_BYTES:
            self.add_error(
                "upload",
                f"The file is {upload.size / 1024 / 1024:.1f} MB, more than the limit of "
                f"{MAX_UPLOAD_BYTES // 1024 // 1024} MB.",
            )
            return []
        try:
            data = json.loads(upload.read().decode("utf-8-sig"))
        except UnicodeDecodeError:
            self.add_error("upload", "The file is not text: upload a UTF-8 JSON file.")
            return []
        except json.JSONDecodeError as exc:
            self.add_error("upload", f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.")
            return []
        try:
            return pages_from_json(data)
        except BookInputError as exc:
            self.add_input_errors(exc)
            return []

    @property
    def pages_field(self) -> str:
        """The field the pages came from, which their errors are shown under."""
        return "upload" if self.is_bound and self.files.get("upload") else "text"

    def add_input_errors(self, exc: BookInputError) -> None:
        """Put the errors of ``book_create`` or ``pages_from_json`` on the fields they are about."""
        pages_field = self.pages_field
        for key, message in exc.errors.items():
            sentence = message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")
            if key in ("title", "workflow"):
                self.add_error(key, sentence)
            elif key == "pages":
                self.add_error(pages_field, sentence)
            else:
                self.page_errors[key] = sentence
        if self.page_errors:
            count = len(self.page_errors)
            pages = "1 page needs" if count == 1 else f"{count} pages need"
            self.add_error(pages_field, f"{pages} fixing:")
