"""The New book form: it turns what a person typed or uploaded into page specs; ``book_check``
decides whether they make a book, and its errors come back onto the form's fields.

A browser clears a file input whenever the form comes back (after an error, or on the preview
that shows the page count before anything renders), so the uploaded file's text comes back in a
hidden field and is used again unless the person types pages or chooses another file."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from books.models import Book, BookPage
from books.services import MAX_PAGES, MAX_PROMPT_CHARS, BookInputError, PageSpec, pages_from_json, pages_from_text
from workflows.models import Style
from workflows.properties import Property, PropertyError
from workflows.services import StyleError, style_get_offered, styles_offered

# 500 pages of 4,000 characters is 2 MB of prompts; twice that leaves room for JSON around them.
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


def property_field(
    prop: Property, *, initial: Any = None, help_text: str = "", optional_boolean: bool = False
) -> forms.Field:
    """A form field for one property, with its limits as HTML attributes (input type, min, max,
    maxlength) so the browser shows them; the values are checked by the property itself
    (workflows.properties), whose messages say what is allowed. ``optional_boolean``: a choice of
    yes, no or empty, for a page that may keep its book's value."""
    help_text = help_text or prop.help or (prop.limits[:1].upper() + prop.limits[1:] + "." if prop.limits else "")
    common: dict[str, Any] = {"label": prop.title, "required": False, "initial": initial, "help_text": help_text}
    if prop.kind == "boolean" and optional_boolean:  # a page's: yes, no, or the book's
        choices = [("", "As the book"), ("true", "Yes"), ("false", "No")]
        return forms.CharField(widget=forms.Select(choices=choices), **common)
    if prop.kind == "boolean":
        return forms.BooleanField(**common)
    if prop.kind == "choice":
        return forms.CharField(widget=forms.Select(choices=[(c, c) for c in prop.choices]), **common)
    if prop.kind in ("integer", "float", "seed"):
        attrs: dict[str, Any] = {"step": "any" if prop.kind == "float" else "1"}
        low = prop.min if prop.min is not None else (0 if prop.kind == "seed" else None)
        if low is not None:
            attrs["min"] = low
        if prop.max is not None:
            attrs["max"] = prop.max
        return forms.CharField(widget=forms.NumberInput(attrs=attrs), **common)
    attrs = {"maxlength": prop.max_length} if prop.max_length else {}
    if prop.max_length and prop.max_length > 200:
        return forms.CharField(widget=forms.Textarea(attrs={**attrs, "rows": 2}), **common)
    return forms.CharField(widget=forms.TextInput(attrs=attrs), **common)


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def _field_value(prop: Property, raw: Any) -> Any:
    """What a property field sent: None when left empty (the default applies)."""
    if prop.kind == "boolean":
        return bool(raw)
    return None if raw in (None, "") else raw


class BookForm(forms.Form):
    title = forms.CharField(max_length=200, error_messages={"required": "A book needs a title."})
    # Radio buttons drawn by the template (name, description and preview of each style).
    style = forms.CharField(error_messages={"required": "Choose a style."})
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
        help_text=(
            'A list of prompts, or of objects {"prompt", "negative_prompt", ...} with any of the style\'s '
            'settings by name, like "width" or "seed".'
        ),
    )
    # The text of the file chosen on an earlier try, and its name (see the module docstring).
    kept_upload = forms.CharField(required=False, widget=forms.HiddenInput)
    kept_upload_name = forms.CharField(required=False, max_length=255, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every offered style's settings, named "<style>__<property>"; only the chosen style's are
        # read (the page script shows only those).
        self.styles: list[Style] = styles_offered()
        self.style_fields: dict[str, list[str]] = {}
        for style in self.styles:
            names = []
            for prop in style.configurable:
                name = f"{style.slug}__{prop.name}"
                self.fields[name] = property_field(prop, initial=prop.default)
                names.append(name)
            self.style_fields[style.slug] = names
        if not self.is_bound and self.styles:
            self.initial.setdefault("style", self.styles[0].slug)
        self.pages: list[PageSpec] = []
        # "page 3" -> message, shown as a list under the pages field.
        self.page_errors: dict[str, str] = {}
        # The file's name and text, to send back with the form (empty when no file is in play).
        self.kept_name = ""
        self.kept_text = ""

    @property
    def style_choices(self) -> list[dict[str, Any]]:
        """Each offered style with its bound fields, for the template's picker."""
        chosen = self["style"].value()
        return [
            {
                "style": style,
                "checked": style.slug == chosen,
                "fields": [self[name] for name in self.style_fields[style.slug]],
            }
            for style in self.styles
        ]

    @property
    def values(self) -> dict[str, Any]:
        """The chosen style's settings as sent (None for empty ones); ``book_check`` checks them."""
        slug = self.cleaned_data.get("style") or ""
        style = next((s for s in self.styles if s.slug == slug), None)
        if style is None:
            return {}
        return {
            prop.name: _field_value(prop, self.cleaned_data.get(f"{slug}__{prop.name}")) for prop in style.configurable
        }

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
        style = self.chosen_style
        if cleaned.get("style") and style is None:
            try:
                style_get_offered(cleaned["style"])
            except StyleError as exc:
                self.add_error("style", _sentence(str(exc)))
        for prop in style.configurable if style else []:
            name = f"{style.slug}__{prop.name}" if style else ""
            value = _field_value(prop, cleaned.get(name))
            if value is not None:
                try:
                    prop.check(value)
                except PropertyError as exc:
                    self.add_error(name, _sentence(str(exc)))
        return cleaned

    @property
    def chosen_style(self) -> Style | None:
        slug = self.data.get("style") if self.is_bound else self.initial.get("style")
        return next((s for s in self.styles if s.slug == slug), None)

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
            return pages_from_json(data, style=self.chosen_style)
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
            sentence = _sentence(message)
            if key in ("title", "style"):
                self.add_error(key, sentence)
            elif key.startswith("value:"):
                name = f"{self.data.get('style')}__{key.removeprefix('value:')}"
                if name not in self.errors:  # clean() may have said it already
                    self.add_error(name if name in self.fields else "style", sentence)
            elif key == "pages":
                self.add_error(pages_field, sentence)
            else:
                self.page_errors[key] = sentence
        if self.page_errors:
            count = len(self.page_errors)
            pages = "1 page needs" if count == 1 else f"{count} pages need"
            self.add_error(pages_field, f"{pages} fixing:")


class PageForm(forms.Form):
    """A page's prompt, negative prompt and its own values of the book's settings (the style's
    configurable properties). A setting left empty takes the book's value; an empty seed draws a
    new random one for each render."""

    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        max_length=MAX_PROMPT_CHARS,
        error_messages={"required": "A page needs a prompt."},
    )
    negative_prompt = forms.CharField(
        required=False, max_length=MAX_PROMPT_CHARS, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, book: Book, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The book's own version, not the style's current one; fixed values cannot be changed.
        fixed = book.style.overrides
        self.props = [
            p
            for p in book.workflow_version.props
            if not p.primary and p.name not in fixed and p.name != "negative_prompt"  # a field of its own
        ]
        for prop in self.props:
            book_value = book.values.get(prop.name, prop.default)
            if book_value is None or book_value == "":
                hint = "Empty: a new random seed each render." if prop.kind == "seed" else "Empty: the book's setting."
            else:
                hint = f"Empty: the book's {book_value}."
            limits = prop.limits[:1].upper() + prop.limits[1:] + ". " if prop.limits else ""
            self.fields[prop.name] = property_field(prop, help_text=limits + hint, optional_boolean=True)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for prop in self.props:
            value = cleaned.get(prop.name)
            if value not in (None, ""):
                try:
                    cleaned[prop.name] = prop.check(value)
                except PropertyError as exc:
                    self.add_error(prop.name, _sentence(str(exc)))
        return cleaned

    @property
    def setting_fields(self) -> list[forms.BoundField]:
        return [self[prop.name] for prop in self.props]

    @classmethod
    def for_page(cls, page: BookPage) -> PageForm:
        return cls(
            page.book,
            initial={"prompt": page.prompt, "negative_prompt": page.negative_prompt, **page.overrides},
        )

    @property
    def spec(self) -> PageSpec:
        data = self.cleaned_data
        overrides = {prop.name: value for prop in self.props if (value := data.get(prop.name)) not in (None, "")}
        return PageSpec(prompt=data["prompt"], negative_prompt=data.get("negative_prompt") or "", overrides=overrides)
