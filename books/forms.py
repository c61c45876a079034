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
from books.models import Book, BookPage
from books.services import MAX_PAGES, MAX_PROMPT_CHARS, BookInputError, PageSpec, pages_from_json, pages_from_text
from workflows.models import Style
from workflows.properties import Property, PropertyError
from workflows.services import StyleError, style_get_offered, styles_offered

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
        # The input images' storage names, sent back with the form on the preview.
        self.kept_input_names: list[str] = []

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
        images = len(cleaned.get("input_images") or []) or len(cleaned.get("kept_inputs") or [])
        if self.pages and images > len(self.pages):
            self.add_error(
                "input_images", f"{images} input images for {len(self.pages)} pages: one image a page at most."
            )
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
            page.book,
            initial={"prompt": page.prompt, "negative_prompt": page.negative_prompt, **page.overrides},
        )

    @property
    def spec(self) -> PageSpec:
        data = self.cleaned_data
        overrides = {prop.name: value for prop in self.props if (value := data.get(prop.name)) not in (None, "")}
        return PageSpec(prompt=data["prompt"], negative_prompt=data.get("negative_prompt") or "", overrides=overrides)
