"""Assets in object storage: stored once by content, present only once verified.

Every asset lives at ``assets/<kind>/<sha256>`` in the "assets" storage (STORAGES["assets"]: a
folder, or an S3 bucket). The web process never holds a whole file: uploads arrive in a temporary
file (FILE_UPLOAD_HANDLERS), are hashed from there in chunks, written to storage, then read back
and hashed again; only a read-back that matches marks the asset present (``verified_at``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import IO

from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from fleets.models import Asset

log = logging.getLogger("bookrender.fleets")
CHUNK = 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class AssetError(ValueError):
    """An asset that cannot be stored or used, with a message that says why."""


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int


def assets_storage() -> Storage:
    return storages["assets"]


def file_digest(stream: IO[bytes]) -> Digest:
    """sha256 and size of a stream, read in 1 MiB chunks from the start."""
    stream.seek(0)
    sha = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        sha.update(chunk)
        size += len(chunk)
    stream.seek(0)
    return Digest(sha.hexdigest(), size)


def stored_digest(key: str) -> Digest | None:
    """What the storage actually holds at ``key`` (read back in chunks), or None when nothing."""
    storage = assets_storage()
    if not storage.exists(key):
        return None
    with storage.open(key, "rb") as stored:
        return file_digest(stored)


def asset_store(
    *, stream: IO[bytes], kind: str, original_name: str, source_url: str = "", notes: str = "", node_classes: str = ""
) -> tuple[Asset, bool]:
    """Store one file as an asset; (asset, created). The same content a second time returns the
    asset already there (first kind and name win) and writes nothing."""
    if kind not in Asset.Kind.values:
        raise AssetError(f"unknown kind {kind!r}; expected one of {', '.join(Asset.Kind.values)}")
    digest = file_digest(stream)
    if digest.size == 0:
        raise AssetError(f"{original_name}: the file is empty")
    existing = Asset.objects.filter(sha256=digest.sha256).first()
    if existing is not None and existing.verified_at is not None:
        return existing, False
    key = f"assets/{kind}/{digest.sha256}" if existing is None else existing.key
    _put(key=key, stream=stream, digest=digest)
    try:
        # The conditional create: of two uploads of the same bytes, one row wins; both wrote the
        # same bytes to the same key, so either storage write is the right one.
        with transaction.atomic():
            asset, created = Asset.objects.get_or_create(
                sha256=digest.sha256,
                defaults={
                    "kind": kind,
                    "size": digest.size,
                    "original_name": original_name[:255],
                    "source_url": source_url,
                    "notes": notes,
                    "node_classes": node_classes,
                },
            )
    except IntegrityError:
        asset, created = Asset.objects.get(sha256=digest.sha256), False
    Asset.objects.filter(pk=asset.pk, verified_at__isnull=True).update(verified_at=timezone.now())
    asset.refresh_from_db()
    log.info(
        "asset stored",
        extra={"event": "asset.stored", "sha256": asset.sha256, "size": asset.size, "new": created},
    )
    return asset, created


def _put(*, key: str, stream: IO[bytes], digest: Digest) -> None:
    """Write the bytes at ``key`` unless the same bytes are there already, then read them back:
    a write that did not land whole is deleted and refused."""
    storage = assets_storage()
    if stored_digest(key) == digest:
        return
    if storage.exists(key):
        storage.delete(key)  # a partial or corrupt object from an earlier attempt
    stream.seek(0)
    saved = storage.save(key, File(stream))
    if saved != key:
        # A local folder renames on a race with another writer of the same key; that writer's
        # bytes are the same, so this copy is surplus.
        storage.delete(saved)
    if stored_digest(key) != digest:
        storage.delete(key)
        raise AssetError(f"the stored copy of {key} does not match the upload (size or sha256); nothing kept")


def asset_verify(*, asset: Asset) -> bool:
    """Read the stored object back; mark the asset present when it matches, absent when not."""
    ok = stored_digest(asset.key) == Digest(asset.sha256, asset.size)
    Asset.objects.filter(pk=asset.pk).update(verified_at=timezone.now() if ok else None)
    asset.refresh_from_db()
    return ok


def asset_delete(*, asset: Asset) -> None:
    """Delete an asset no bundle uses (BundleEntry.asset is PROTECT: the database refuses otherwise)."""
    key = asset.key
    with transaction.atomic():
        asset.delete()
        transaction.on_commit(lambda: assets_storage().delete(key))
