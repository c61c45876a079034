"""The fleets world: a local assets folder per test (or moto's S3 server on a real socket), a
fleet with its secret, and helpers that build assets and bundles the way the admin does."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import storages

from fleets.assets import asset_store
from fleets.bundles import bundle_entry_add, bundle_publish
from fleets.models import Asset, Bundle, Fleet
from fleets.services import fleet_create
from renders.comfy import ComfyClient
from tests.s3server import S3Server, storages_for


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


@pytest.fixture
def object_info(simulator: Any) -> Iterator[dict[str, Any]]:
    """A live instance's raw /object_info (the simulator's), as an activation checks against."""
    client = ComfyClient(simulator.url, timeout=30)
    try:
        yield client.object_info_raw()
    finally:
        client.close()


@pytest.fixture
def s3_assets(settings: Any, s3_endpoint: str) -> Iterator[Any]:
    """The assets storage on the tests' moto S3 server (tests/s3server.py), in a fresh bucket;
    yields the boto3 client, with the bucket's name as ``client.bucket``."""
    server = S3Server(endpoint=s3_endpoint, bucket=f"assets-{uuid.uuid4().hex[:12]}")
    client = server.client()
    client.create_bucket(Bucket=server.bucket)
    options = storages_for(server)["default"]["OPTIONS"]
    settings.STORAGES = {
        **settings.STORAGES,
        "assets": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
    }
    _reset_assets_storage()
    client.bucket = server.bucket
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


class FlakyProxy:
    """A real HTTP proxy in front of bookrender that spoils blob downloads on demand: each fault
    in ``faults`` is used by one blob request ("cut": half the body, then the connection closes;
    "corrupt": one byte flipped). ``ranges`` records every Range header a blob request carried."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading

        import requests

        self.upstream = upstream
        self.faults: list[str] = []
        self.ranges: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                answer = requests.request(method, proxy.upstream + self.path, headers=headers, data=body, timeout=60)
                content = answer.content
                fault = ""
                if "/fleets/api/blobs/" in self.path:
                    proxy.ranges.append(self.headers.get("Range", ""))
                    fault = proxy.faults.pop(0) if proxy.faults else ""
                if fault == "corrupt":
                    content = content[:-1] + bytes([content[-1] ^ 0xFF])
                self.send_response(answer.status_code)
                for key in ("Content-Type", "Content-Range", "Accept-Ranges"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(content)))
                if fault == "cut":
                    self.send_header("Connection", "close")
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def live(live_server: Any) -> Iterator[Any]:
    """live_server whose request threads close their database connections after each request
    (CONN_MAX_AGE would keep them open past the test, and the test database could not be dropped)."""
    from django.db import connections

    saved = connections.settings["default"]["CONN_MAX_AGE"]
    connections.settings["default"]["CONN_MAX_AGE"] = 0
    yield live_server
    connections.settings["default"]["CONN_MAX_AGE"] = saved


@pytest.fixture
def flaky_proxy(live: Any) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(live.url)
    yield proxy
    proxy.close()


def register_workflow(slug: str, node_class: str) -> None:
    """A registered workflow whose graph runs ``node_class`` into SaveImage (the prompt feeds a
    text node, as in the built-in model-free one)."""
    from workflows.models import Workflow
    from workflows.services import version_create

    graph = {
        "1": {"class_type": node_class, "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
        "3": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "{{PROMPT}}"}},
    }
    version_create(
        workflow=Workflow.objects.create(name=slug, slug=slug),
        graph=graph,
        output_node="2",
        properties=[{"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True}],
    )
