"""Where page files live, and how a browser gets them.

Page inputs, outputs, versions and thumbnails all go through Django's storage API
(``default_storage``): the local disk by default (``make run``), or an S3-compatible object store
when ``BOOKRENDER_STORAGE=s3``, so that a web host and GPU hosts share no disk.

- Writes to the object store are conditional creates (``If-None-Match: *``): every name we write
  is unique to its content or to the claim that wrote it, so a name that exists already holds the
  same file, and nothing is ever overwritten.
- Browsers never see the bucket itself: the views check ownership and then either stream the file
  (disk) or redirect to a presigned URL that expires after ``BOOKRENDER_S3_URL_EXPIRY_SEC``.
- A store that is down raises ``StorageUnavailable``: workers wait and retry, views answer 503
  with a sentence instead of a 500.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

# What the object store or the disk raises when it cannot be reached or answers an error.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, BotoCoreError, ClientError)

mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("video/mp4", ".mp4")
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("image/apng", ".apng")


class StorageUnavailable(Exception):
    """The file storage could not be read or written; worth trying again later."""


class ObjectStorage(S3Storage):  # type: ignore[misc]  # django-storages has no type hints
    """django-storages' S3 backend, writing with a conditional create (If-None-Match: *)."""

    def _save(self, name: str, content: File[Any]) -> str:
        cleaned = clean_name(name)
        key = self._normalize_name(cleaned)
        params = self._get_write_parameters(key, content)
        content.seek(0)
        try:
            self.bucket.meta.client.put_object(
                Bucket=self.bucket_name,
                Key=key,
                Body=content.read(),
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                **params,
            )
        except ClientError as exc:
            # 412: the name exists. Our names are unique to their content or to their writer's
            # claim, so what is there is this very file (a retried write, two thumbnailers racing).
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
        return str(cleaned)


def is_object_storage() -> bool:
    return settings.BOOKRENDER_STORAGE == "s3"


def content_type(name: str) -> str:
    """The MIME type of a stored file, from its extension (the workflow chose it)."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def media_kind(name: str) -> str:
    """``video``, ``animated`` (may animate: GIF, WebP, APNG) or ``image``."""
    mime = content_type(name)
    if mime.startswith("video/"):
        return "video"
    if mime in ("image/gif", "image/webp", "image/apng"):
        return "animated"
    return "image"


def file_response(name: str, *, download_name: str | None = None) -> HttpResponseBase:
    """The stored file for a browser whose right to it the caller has checked: a redirect to a
    presigned URL on the object store, or a stream from the disk. Raises StorageUnavailable."""
    mime = content_type(name)
    try:
        if is_object_storage():
            parameters = {"ResponseContentType": mime}
            if download_name:
                parameters["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
            # S3Storage.url takes the response headers to sign into the URL.
            return HttpResponseRedirect(default_storage.url(name, parameters=parameters))  # type: ignore[call-arg]
        return FileResponse(
            default_storage.open(name, "rb"),
            content_type=mime,
            as_attachment=bool(download_name),
            filename=download_name or "",
        )
    except STORAGE_ERRORS as exc:
        raise StorageUnavailable(f"cannot read {name}: {type(exc).__name__}") from exc
