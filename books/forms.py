"""The New book form: it turns what a person typed or uploaded into page specs; ``book_check``
decides whether they make a book, and its errors come back onto the form's fields.

A browser clears a file input whenever the form comes back (after an error, or on the preview
that shows the page count before anything renders), so the uploaded file's text comes back in a
hidden field and is used again unless the person types pages or chooses another file."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from django import forms

from books.inputs import InputImageError, input_image_check, input_image_read, input_image_store
from books.models import BookPage
from books.services import MAX_PAGES, MAX_PROMPT_CHARS, BookInputError, PageSpec, pages_from_json, pages_from_text
from renders.workflows import MAX_SIZE, MIN_SIZE, workflow_choices

# 500 pages of 4,000 characters is 2 MB of prompts; twice that leaves room for JSON around them.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


class MultipleImageInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Any number of files (a list; empty when none was chosen)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleImageInput(attrs={"accept": "image/png,image/jpeg,image/webp"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        files = data if isinstance(data, list | tuple) else [data]
        return [super(MultipleImageField, self).clean(item, initial) for item in files if item]


# A kept input image's storage name (books.inputs names them by content).
_KEPT_INPUT_RE = re.compile(r"^inputs/[0-9a-f]{64}\.(png|jpg|webp)$")


class BookForm(forms.Form):
    title = forms.CharField(max_length=200, error_messages={"required": "A book needs a title."})
    workflow = forms.ChoiceField(choices=workflow_choices)
    text = forms.CharField(
        label="Pages",
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "placeholder": "A lighthouse on a cliff at dawn\n\nA fox …"}),
        help_text=(
            f"One prompt per line, or, for prompts that run over several lines, a blank line between "
            f"pages (at most {MAX_PAGES})."
        ),
    )
    upload = forms.FileField(
        label="Or a JSON file",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
        help_text='A list of prompts, or of objects {"prompt", "negative_prompt", "width", "height", "seed"}.',
    )
    input_images = MultipleImageField(
        label="Input images",
        required=False,
        help_text=(
            "For workflows that start from a picture: PNG, JPEG or WebP, in page order (the first "
            "goes to page 1, the second to page 2, …)."
        ),
    )
    # The input images stored on an earlier try (the preview), by storage name, comma-separated.
    kept_inputs = forms.CharField(required=False, widget=forms.HiddenInput)
    # The text of the file chosen on an earlier try, and its name (see the module docstring).
    kept_upload = forms.CharField(required=False, widget=forms.HiddenInput)
    kept_upload_name = forms.CharField(required=False, max_length=255, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages: list[PageSpec] = []
        # "page 3" -> message, shown as a list under the pages field.
        self.page_errors: dict[str, str] = {}
        # The file's name and text, to send back with the form (empty when no file is in play).
        self.kept_name = ""
        self.kept_text = ""
        # The input images' storage names, sent back with the form on the preview.
        self.kept_input_names: list[str] = []

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        text, upload = cleaned.get("text") or "", cleaned.get("upload")
        kept = cleaned.get("kept_upload") or ""
        if text.strip() and upload:
            self.add_error("upload", "Give the pages as text or as a JSON file, not both.")
        elif upload:
            self.pages = self._pages_from_upload(upload)
        elif text.strip():
            self.pages = pages_from_text(text)
        elif kept:
            self.kept_name = cleaned.get("kept_upload_name") or "the file"
            self.kept_text = kept
            self.pages = self._pages_from_json_text(kept.encode())
        elif "text" not in self.errors:
            self.add_error("text", "A book needs at least one page.")
        images = len(cleaned.get("input_images") or []) or len(cleaned.get("kept_inputs") or [])
        if self.pages and images > len(self.pages):
            self.add_error(
                "input_images", f"{images} input images for {len(self.pages)} pages: one image a page at most."
            )
        return cleaned

    def clean_input_images(self) -> list[bytes]:
        images = []
        for number, upload in enumerate(self.cleaned_data.get("input_images") or [], start=1):
            try:
                data = input_image_read(upload, size=upload.size)
                input_image_check(data)
            except InputImageError as exc:
                raise forms.ValidationError(f"Image {number} ({upload.name}): {exc}") from None
            images.append(data)
        return images

    def clean_kept_inputs(self) -> list[str]:
        names = [name for name in (self.cleaned_data.get("kept_inputs") or "").split(",") if name]
        if not all(_KEPT_INPUT_RE.match(name) for name in names):
            # A hidden field: its error goes to the top of the form, where people see it.
            self.add_error(None, "The input images of the last try were lost: choose them again.")
            return []
        return names

    def pages_with_inputs(self) -> list[PageSpec]:
        """The pages, the input images (new ones stored now, else those kept from the preview) given
        to them in order. Raises StorageUnavailable (books.storage) when the storage does not answer."""
        images = self.cleaned_data.get("input_images") or []
        names = [input_image_store(data) for data in images] if images else self.cleaned_data.get("kept_inputs") or []
        self.kept_input_names = names
        return [
            replace(spec, input_image=names[index]) if index < len(names) else spec
            for index, spec in enumerate(self.pages)
        ]

    def _pages_from_upload(self, upload: Any) -> list[PageSpec]:
        if upload.size > MAX_UPLOAD_BYTES:
            self.add_error(
                "upload",
                f"The file is {upload.size / 1024 / 1024:.1f} MB, more than the limit of "
                f"{MAX_UPLOAD_BYTES // 1024 // 1024} MB.",
            )
            return []
        content = upload.read()
        pages = self._pages_from_json_text(content)
        if self.kept_text:
            self.kept_name = upload.name
        return pages

    def _pages_from_json_text(self, content: bytes) -> list[PageSpec]:
        if len(content) > MAX_UPLOAD_BYTES:
            self.add_error("upload", f"The file is more than the limit of {MAX_UPLOAD_BYTES // 1024 // 1024} MB.")
            return []
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            self.add_error("upload", "The file is not text: upload a UTF-8 JSON file.")
            return []
        # Kept from here on, even when it is not valid JSON: the person fixes the file and chooses
        # it again, or fixes the other fields and keeps it.
        self.kept_text = text
        try:
            data = json.loads(text)
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
        if self.is_bound and (self.files.get("upload") or (self.kept_text and not self.data.get("text", "").strip())):
            return "upload"
        return "text"

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


_SIZE_HELP = f"Pixels, {MIN_SIZE} to {MAX_SIZE}; empty: the workflow's default."


class PageForm(forms.Form):
    """A page's settings, for an owner's edit or a new page. Seed, width and height are optional:
    left empty, the workflow's default size and a fresh random seed are used."""

    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        max_length=MAX_PROMPT_CHARS,
        error_messages={"required": "A page needs a prompt."},
    )
    negative_prompt = forms.CharField(
        required=False, max_length=MAX_PROMPT_CHARS, widget=forms.Textarea(attrs={"rows": 2})
    )
    seed = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=2**32 - 1,
        help_text="Empty: a new random seed each render. The same seed and prompt draw the same image.",
    )
    width = forms.IntegerField(required=False, min_value=MIN_SIZE, max_value=MAX_SIZE, help_text=_SIZE_HELP)
    height = forms.IntegerField(required=False, min_value=MIN_SIZE, max_value=MAX_SIZE, help_text=_SIZE_HELP)

    input_image = forms.FileField(
        label="Input image",
        required=False,
        widget=forms.FileInput(attrs={"accept": "image/png,image/jpeg,image/webp"}),
        help_text="For workflows that start from a picture (a sketch to colour in): PNG, JPEG or WebP.",
    )
    remove_input_image = forms.BooleanField(label="Remove the input image", required=False)

    def clean_input_image(self) -> bytes | None:
        """The upload's bytes, checked by decoding them (books.inputs); None when none was chosen."""
        upload = self.cleaned_data.get("input_image")
        if not upload:
            return None
        try:
            data = input_image_read(upload, size=upload.size)
            input_image_check(data)
        except InputImageError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data

    def input_image_name(self) -> str | None:
        """Store a chosen input image: its storage name; "" to remove the page's; None to keep it.
        Raises StorageUnavailable (books.storage) when the storage does not answer."""
        data = self.cleaned_data.get("input_image")
        if data:
            return input_image_store(data)
        return "" if self.cleaned_data.get("remove_input_image") else None

    @classmethod
    def for_page(cls, page: BookPage) -> PageForm:
        return cls(
            initial={
                "prompt": page.prompt,
                "negative_prompt": page.negative_prompt,
                **{key: page.overrides.get(key) for key in ("seed", "width", "height")},
            }
        )

    @property
    def spec(self) -> PageSpec:
        data = self.cleaned_data
        overrides = {key: data[key] for key in ("seed", "width", "height") if data.get(key) is not None}
        return PageSpec(prompt=data["prompt"], negative_prompt=data.get("negative_prompt") or "", overrides=overrides)
