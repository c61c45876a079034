from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from django.db.models.deletion import ProtectedError

from fleets.assets import AssetError, asset_delete, asset_store, asset_verify, assets_storage
from fleets.models import Asset
from tests.fleets.conftest import make_asset, make_bundle

MODEL = b"weights " * 4096


def test_it_stores_an_upload_by_content_and_verifies_it(admin_client, local_assets: Path):
    sha = hashlib.sha256(MODEL).hexdigest()
    upload = io.BytesIO(MODEL)
    upload.name = "tiny.safetensors"
    response = admin_client.post(
        "/admin/fleets/asset/add/",
        {"upload": upload, "kind": "checkpoint", "source_url": "", "notes": "", "node_classes": ""},
    )
    assert response.status_code == 302, response.content[:2000]
    asset = Asset.objects.get()
    assert (asset.sha256, asset.size, asset.original_name) == (sha, len(MODEL), "tiny.safetensors")
    assert asset.verified_at is not None
    assert (local_assets / "assets" / "checkpoint" / sha).read_bytes() == MODEL


def test_the_same_content_twice_is_stored_once(db, local_assets: Path):
    first, created = asset_store(stream=io.BytesIO(MODEL), kind="checkpoint", original_name="a.safetensors")
    again, created_again = asset_store(stream=io.BytesIO(MODEL), kind="lora", original_name="b.safetensors")
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk and Asset.objects.count() == 1
    assert [p.name for p in local_assets.rglob("*") if p.is_file()] == [first.sha256]


def test_an_empty_file_is_refused(db):
    with pytest.raises(AssetError, match="empty"):
        asset_store(stream=io.BytesIO(b""), kind="checkpoint", original_name="empty.safetensors")


def test_an_asset_a_bundle_uses_cannot_be_deleted(db, admin_client):
    used = make_asset(MODEL)
    make_bundle("b1", used)
    with pytest.raises(ProtectedError):
        asset_delete(asset=used)
    admin_client.post(f"/admin/fleets/asset/{used.pk}/delete/", {"post": "yes"})
    assert Asset.objects.filter(pk=used.pk).exists()
    assert assets_storage().exists(used.key)


def test_a_stored_object_that_changed_no_longer_counts_as_present(db, local_assets: Path):
    asset = make_asset(MODEL)
    (local_assets / asset.key).write_bytes(MODEL[:-1] + b"X")
    assert asset_verify(asset=asset) is False
    assert asset.verified_at is None


def test_assets_go_to_s3_and_are_read_back(db, s3_assets):
    asset = make_asset(MODEL, kind="lora", name="style.safetensors")
    body = s3_assets.get_object(Bucket=s3_assets.bucket, Key=f"assets/lora/{asset.sha256}")["Body"].read()
    assert body == MODEL and asset.verified_at is not None
    # Corrupted in the bucket: the read-back check notices.
    s3_assets.put_object(Bucket=s3_assets.bucket, Key=asset.key, Body=b"not the model")
    assert asset_verify(asset=asset) is False
