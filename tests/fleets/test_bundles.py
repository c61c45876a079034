from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fleets.bundles import BundleError, bundle_entry_add, bundle_manifest, bundle_publish, target_path_check
from fleets.models import Asset, Bundle
from tests.fleets.conftest import make_asset, make_bundle


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/models/checkpoints/x.safetensors", "checkpoint"),
        ("models/checkpoints/../../etc/passwd", "checkpoint"),
        ("models/./checkpoints/x", "checkpoint"),
        ("models/loras/x.safetensors", "checkpoint"),  # a checkpoint under loras/
        ("web/x.js", "other"),
        ("models\\checkpoints\\x", "checkpoint"),
        ("models/checkpoints", "checkpoint"),
    ],
)
def test_it_refuses_target_paths_outside_the_kinds_folder(path, kind):
    with pytest.raises(BundleError):
        target_path_check(path, kind=kind)


def test_it_accepts_paths_in_subfolders():
    assert target_path_check("models/checkpoints/sdxl/x.safetensors", kind="checkpoint") == (
        "models/checkpoints/sdxl/x.safetensors"
    )


def test_entries_default_to_the_kinds_folder_and_may_not_overlap(db):
    model = make_asset(b"model" * 100)
    node = make_asset(b"PK\x03\x04 archive", kind=Asset.Kind.CUSTOM_NODE, name="fancy-nodes.zip")
    bundle = Bundle.objects.create(name="b")
    assert bundle_entry_add(bundle=bundle, asset=model).target_path == "models/checkpoints/tiny.safetensors"
    entry = bundle_entry_add(bundle=bundle, asset=node)
    assert (entry.target_path, entry.action) == ("custom_nodes/fancy-nodes", "extract_zip")
    other = make_asset(b"other" * 10, kind=Asset.Kind.OTHER, name="inner.bin")
    with pytest.raises(BundleError, match="overlaps"):
        bundle_entry_add(bundle=bundle, asset=other, target_path="custom_nodes/fancy-nodes/inner.bin", action="copy")
    with pytest.raises(BundleError, match="overlaps"):
        bundle_entry_add(bundle=bundle, asset=model)


def test_publishing_writes_a_canonical_manifest_and_freezes_the_bundle(db, local_assets: Path):
    model = make_asset(b"model" * 100)
    bundle = make_bundle("b1", model)
    raw = (local_assets / "bundles" / str(bundle.pk) / "manifest.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == bundle.manifest_sha256
    manifest = json.loads(raw)
    assert manifest["entries"] == [
        {
            "key": f"assets/checkpoint/{model.sha256}",
            "sha256": model.sha256,
            "size": 500,
            "kind": "checkpoint",
            "target_path": "models/checkpoints/tiny.safetensors",
            "action": "copy",
        }
    ]
    assert raw == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(BundleError, match="published"):
        bundle_entry_add(bundle=bundle, asset=make_asset(b"other" * 10), target_path="models/checkpoints/o.ckpt")
    with pytest.raises(BundleError, match="already published"):
        bundle_publish(bundle=bundle)


def test_a_manifest_changed_in_storage_is_not_trusted(db, local_assets: Path):
    bundle = make_bundle("b1", make_asset(b"model" * 100))
    (local_assets / bundle.manifest_key).write_bytes(b'{"entries":[]}')
    with pytest.raises(BundleError, match="does not match"):
        bundle_manifest(bundle=bundle)


def test_an_empty_bundle_cannot_be_published(db):
    with pytest.raises(BundleError, match="no entries"):
        bundle_publish(bundle=Bundle.objects.create(name="empty"))
