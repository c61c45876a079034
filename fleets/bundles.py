"""Bundles: which assets go where under the ComfyUI folder. Immutable once published.

Publishing writes the canonical manifest (sorted keys, no spaces, UTF-8) to
``bundles/<id>/manifest.json`` in the assets storage and records its sha256; hosts check the
manifest they download against that sha256 before trusting a byte of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from fleets.assets import assets_storage
from fleets.models import Asset, Bundle, BundleEntry

MANIFEST_VERSION = 1
ROOTS = ("models", "custom_nodes", "input")
# Where each kind goes (ComfyUI's folder_paths names); "other" may go under any root.
KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    Asset.Kind.CHECKPOINT: ("models/checkpoints",),
    Asset.Kind.LORA: ("models/loras",),
    Asset.Kind.VAE: ("models/vae",),
    Asset.Kind.EMBEDDING: ("models/embeddings",),
    Asset.Kind.CONTROLNET: ("models/controlnet",),
    Asset.Kind.CUSTOM_NODE: ("custom_nodes",),
    Asset.Kind.OTHER: ROOTS,
}
_ARCHIVE_SUFFIXES = {".zip": BundleEntry.Action.EXTRACT_ZIP, ".tar.gz": BundleEntry.Action.EXTRACT_TAR_GZ}


class BundleError(ValueError):
    """An entry or bundle that cannot be used, with a message that says why."""


def target_path_check(path: str, *, kind: str) -> str:
    """The normalised target path, or BundleError: relative, no `..`, under the kind's folder."""
    if not path or path != path.strip():
        raise BundleError(f"target path {path!r}: empty or with spaces around it")
    if "\\" in path or "\x00" in path:
        raise BundleError(f"target path {path!r}: use / between folders")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise BundleError(f"target path {path!r}: must be relative to the ComfyUI folder")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise BundleError(f"target path {path!r}: no '..', '.' or empty parts")
    folders = KIND_FOLDERS[kind]
    if not any(pure.is_relative_to(folder) and pure != PurePosixPath(folder) for folder in folders):
        raise BundleError(f"target path {path!r}: a {kind} goes under {' or '.join(f + '/' for f in folders)}")
    return str(pure)


def default_entry(asset: Asset) -> tuple[str, str]:
    """(target_path, action) for an asset added without either: its kind's folder and its name;
    a custom node's archive is extracted into custom_nodes/<name without the suffix>."""
    name = PurePosixPath(asset.original_name.replace("\\", "/")).name
    for suffix, action in _ARCHIVE_SUFFIXES.items():
        if asset.kind == Asset.Kind.CUSTOM_NODE and name.endswith(suffix):
            return f"custom_nodes/{name[: -len(suffix)]}", action
    return f"{KIND_FOLDERS[asset.kind][0]}/{name}", BundleEntry.Action.COPY


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


def bundle_entry_add(*, bundle: Bundle, asset: Asset, target_path: str = "", action: str = "") -> BundleEntry:
    """Add one entry to a draft bundle, checking path, action and overlaps."""
    with transaction.atomic():
        locked = Bundle.objects.select_for_update().get(pk=bundle.pk)
        if locked.is_published:
            raise BundleError(f"bundle {locked.name!r} is published and cannot change; make a new bundle")
        default_path, default_action = default_entry(asset)
        path = target_path_check(target_path or default_path, kind=asset.kind)
        action = action or default_action
        if action not in BundleEntry.Action.values:
            raise BundleError(f"unknown action {action!r}; expected one of {', '.join(BundleEntry.Action.values)}")
        if asset.verified_at is None:
            raise BundleError(f"asset {asset} is not present in storage (not verified); upload it again")
        for other in locked.entries.values_list("target_path", flat=True):
            if _overlaps(path, other):
                raise BundleError(f"target path {path!r} overlaps {other!r}, already in the bundle")
        return BundleEntry.objects.create(bundle=locked, asset=asset, target_path=path, action=action)


def manifest_of(bundle: Bundle) -> dict[str, Any]:
    entries = bundle.entries.select_related("asset").order_by("target_path")
    return {
        "version": MANIFEST_VERSION,
        "bundle_id": bundle.pk,
        "name": bundle.name,
        "comfyui": {"source": bundle.comfyui_source, "ref": bundle.comfyui_ref} if bundle.comfyui_ref else None,
        "entries": [
            {
                "key": entry.asset.key,
                "sha256": entry.asset.sha256,
                "size": entry.asset.size,
                "kind": entry.asset.kind,
                "target_path": entry.target_path,
                "action": entry.action,
            }
            for entry in entries
        ],
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical form whose sha256 is the manifest's identity."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def bundle_publish(*, bundle: Bundle) -> Bundle:
    """Freeze a draft bundle: write its manifest, record the manifest's sha256."""
    with transaction.atomic():
        locked = Bundle.objects.select_for_update().get(pk=bundle.pk)
        if locked.is_published:
            raise BundleError(f"bundle {locked.name!r} is already published")
        if not locked.entries.exists():
            raise BundleError(f"bundle {locked.name!r} has no entries")
        missing = [str(e.asset) for e in locked.entries.select_related("asset") if e.asset.verified_at is None]
        if missing:
            raise BundleError(f"bundle {locked.name!r}: assets not present in storage: {', '.join(missing)}")
        data = manifest_bytes(manifest_of(locked))
        storage = assets_storage()
        if storage.exists(locked.manifest_key):
            storage.delete(locked.manifest_key)  # left by a publish whose transaction rolled back
        storage.save(locked.manifest_key, ContentFile(data))
        locked.manifest_sha256 = hashlib.sha256(data).hexdigest()
        locked.published_at = timezone.now()
        locked.save(update_fields=["manifest_sha256", "published_at"])
        return locked


@dataclass(frozen=True)
class PublishedManifest:
    bundle: Bundle
    manifest: dict[str, Any]
    raw: bytes


def bundle_manifest(*, bundle: Bundle) -> PublishedManifest:
    """The stored manifest of a published bundle, checked against its recorded sha256."""
    if not bundle.is_published:
        raise BundleError(f"bundle {bundle.name!r} is not published")
    with assets_storage().open(bundle.manifest_key, "rb") as stored:
        raw = stored.read()
    if hashlib.sha256(raw).hexdigest() != bundle.manifest_sha256:
        raise BundleError(f"bundle {bundle.name!r}: the stored manifest does not match its recorded sha256")
    return PublishedManifest(bundle=bundle, manifest=json.loads(raw), raw=raw)
