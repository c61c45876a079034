"""The fleets world: a local assets folder per test (or moto's S3 server on a real socket), a
fleet with its secret, and helpers that build assets and bundles the way the admin does."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages

from fleets.assets import asset_store
from fleets.bundles import bundle_entry_add, bundle_publish
from fleets.models import Asset, Bundle, Fleet
from fleets.services import fleet_create


def _reset_assets_storage() -> None:
    # django caches each storage alias's instance; a test that changes STORAGES needs a fresh one.
    storages._storages.pop("assets", None)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def local_assets(settings: Any, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "objects"
    settings.STORAGES = {
        **settings.STORAGES,
        "assets": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(root)}},
    }
    _reset_assets_storage()
    yield root
    _reset_assets_storage()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a real socket; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_assets(settings: Any, moto_s3: str) -> Iterator[Any]:
    """The assets storage on moto's S3 server, in a fresh bucket; yields the boto3 client."""
    import uuid

    import boto3

    bucket = f"assets-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket=bucket)
    settings.STORAGES = {
        **settings.STORAGES,
        "assets": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": moto_s3,
                "region_name": "us-east-1",
                "access_key": "test",
                "secret_key": "test",
                "file_overwrite": True,
                "default_acl": None,
            },
        },
    }
    _reset_assets_storage()
    client.bucket = bucket
    yield client
    _reset_assets_storage()


def make_asset(
    content: bytes, *, kind: str = Asset.Kind.CHECKPOINT, name: str = "tiny.safetensors", **extra: Any
) -> Asset:
    asset, _ = asset_store(stream=io.BytesIO(content), kind=kind, original_name=name, **extra)
    return asset


def make_bundle(name: str, *assets: Asset, publish: bool = True) -> Bundle:
    bundle = Bundle.objects.create(name=name)
    for asset in assets:
        bundle_entry_add(bundle=bundle, asset=asset)
    return bundle_publish(bundle=bundle) if publish else bundle


@pytest.fixture
def fleet(db: None) -> Fleet:
    return fleet_create(slug="gpu-default")
