"""Input images that pages carry (img2img, a sketch to colour in): checked, then stored.

An upload is decoded with Pillow whatever its name says, and refused with a sentence when it is not
a PNG, JPEG or WebP image, is more than BOOKRENDER_INPUT_MAX_MB, or has more than
BOOKRENDER_INPUT_MAX_PIXELS pixels. A good one is stored under a name made from its content
(``inputs/<sha256>.<ext>``): the same picture uploaded twice is one file, and a write that is
repeated after an error writes nothing new. A file is deleted only when no page names it any more.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from typing import IO

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from books.storage import STORAGE_ERRORS, StorageUnavailable

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


class InputImageError(ValueError):
    """An upload that cannot be a page's input image; the message says why, for the form."""


def input_image_check(data: bytes) -> str:
    """The extension for a good input image; raises InputImageError for a bad one."""
    limit_mb = settings.BOOKRENDER_INPUT_MAX_MB
    if len(data) > limit_mb * 1024 * 1024:
        raise InputImageError(f"The image is {len(data) / 1024 / 1024:.1f} MB, more than the limit of {limit_mb} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                width, height = image.size
                if kind in FORMATS and width * height <= settings.BOOKRENDER_INPUT_MAX_PIXELS:
                    image.load()  # decode it all: a truncated or corrupt file fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(
            f"The image has too many pixels; the limit is {settings.BOOKRENDER_INPUT_MAX_PIXELS:,}."
        ) from None
    except Exception:  # Pillow raises many types for a file that is not an image
        raise InputImageError("The file is not an image Pillow can read: upload a PNG, JPEG or WebP image.") from None
    if kind not in FORMATS:
        raise InputImageError(f"The image is {kind or 'of an unknown kind'}: upload a PNG, JPEG or WebP image.")
    if width * height > settings.BOOKRENDER_INPUT_MAX_PIXELS:
        raise InputImageError(
            f"The image is {width} x {height} pixels, more than the limit of "
            f"{settings.BOOKRENDER_INPUT_MAX_PIXELS:,} pixels."
        )
    return FORMATS[kind]


def input_image_read(upload: IO[bytes], *, size: int | None) -> bytes:
    """An upload's bytes, reading at most one byte past the limit."""
    limit = settings.BOOKRENDER_INPUT_MAX_MB * 1024 * 1024
    if size is not None and size > limit:
        raise InputImageError(
            f"The image is {size / 1024 / 1024:.1f} MB, more than the limit of {limit // 1024 // 1024} MB."
        )
    return upload.read(limit + 1)


def input_image_store(data: bytes) -> str:
    """Check and store an input image; its storage name. Raises InputImageError, StorageUnavailable."""
    extension = input_image_check(data)
    name = f"inputs/{hashlib.sha256(data).hexdigest()}.{extension}"
    try:
        if not default_storage.exists(name):
            default_storage.save(name, ContentFile(data))
    except STORAGE_ERRORS as exc:
        raise StorageUnavailable(f"cannot store the input image: {type(exc).__name__}") from exc
    return name


def input_images_delete_unused(names: Iterable[str]) -> int:
    """Delete those of ``names`` that no page names any more; how many were deleted."""
    from books.models import BookPage

    deleted = 0
    for name in set(names) - {""}:
        if not BookPage.objects.filter(input_image=name).exists() and default_storage.exists(name):
            default_storage.delete(name)
            deleted += 1
    return deleted
