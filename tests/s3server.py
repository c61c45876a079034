"""A real S3-compatible server on loopback for the tests: moto in server mode (ThreadedMotoServer).

It speaks S3's HTTP API on a socket, answers SHA256 checksums, If-None-Match conditional creates,
Range requests and presigned URLs, and keeps its objects in memory. One server per test session;
each test that uses it gets a fresh bucket, and the settings (or the environment of the processes
it starts) that point bookrender at it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ops.devstack import free_port

ACCESS_KEY = "bookrender-test"
SECRET_KEY = "bookrender-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def env(self) -> dict[str, str]:
        """The environment that points a bookrender process at this bucket."""
        return {
            "BOOKRENDER_STORAGE": "s3",
            "BOOKRENDER_S3_BUCKET": self.bucket,
            "BOOKRENDER_S3_ENDPOINT_URL": self.endpoint,
            "BOOKRENDER_S3_REGION": REGION,
            "BOOKRENDER_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "BOOKRENDER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def storages_for(server: S3Server, *, endpoint: str | None = None) -> dict[str, Any]:
    """The STORAGES setting config.settings builds for BOOKRENDER_STORAGE=s3 and this server."""
    return {
        "default": {
            "BACKEND": "books.storage.ObjectStorage",
            "OPTIONS": {
                "bucket_name": server.bucket,
                "endpoint_url": endpoint or server.endpoint,
                "region_name": REGION,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "default_acl": None,
                "querystring_auth": True,
                "querystring_expire": 300,
                "signature_version": "s3v4",
                "addressing_style": "path",
                "file_overwrite": True,
            },
        },
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole test session."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, settings: Any) -> Iterator[S3Server]:
    """A fresh private bucket, and this test's default storage pointed at it."""
    server = S3Server(endpoint=s3_endpoint, bucket=f"bookrender-{uuid.uuid4().hex[:12]}")
    client = server.client()
    client.create_bucket(Bucket=server.bucket)
    settings.BOOKRENDER_STORAGE = "s3"
    settings.BOOKRENDER_S3_BUCKET = server.bucket
    settings.STORAGES = storages_for(server)
    yield server
    for key in server.keys():  # noqa: SIM118 -- S3Server.keys lists the bucket
        client.delete_object(Bucket=server.bucket, Key=key)
    client.delete_bucket(Bucket=server.bucket)
