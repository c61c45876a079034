"""Issue 16's two GPU hosts, live, against real ComfyUI 0.3.64 (tests/realcomfyui.py).

Each host has its own folder (its ops.assetsync home, with ``current``), its own ComfyUI (the tests'
cached install on a port and data folder of its own, reading custom nodes and checkpoints from its
host's ``current`` through its own extra_model_paths.yaml) and its own render worker, which serves
only that ComfyUI (BOOKRENDER_WORKER_INSTANCES). The hosts share nothing but PostgreSQL, Redis and
S3 (moto): blobs reach them through presigned URLs, page files go to the bucket. Each host applies
bundles with the real client, registering with the fleet secret; its restart command restarts its
ComfyUI, which then loads the bundle's custom node (a git archive made here).

1. Bundle 1 carries FleetTestTint v1 and a red "model". Host a applies it. Host b applied bundle 0
   (the model alone) and its next sync is not due yet: it is ready, up and heartbeating, but behind.
   Every page of the new workflow renders on a.
2. Bundle 2 (the node's v2, a blue model) is activated: both hosts follow, and each ComfyUI loaded v2.
3. Host a goes silent while pages render (its ComfyUI, worker and heartbeats gone): it goes stale,
   then offline, and every page ends Done, the ones a held on b.

Run it with ``-s`` to see the figures (also in test-artifacts/fleet-two-hosts-real-comfyui.json).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.files.storage import default_storage
from PIL import Image

from books.models import BookPage
from books.services import PageSpec, book_create
from comfysim.nodes import OBJECT_INFO_PATH
from fleets.models import Asset, Fleet, Host
from fleets.services import fleet_activate, fleet_workflow_assign
from ops import livestack
from ops.assetsync import LOG_NAME, Options, Server, SyncError, apply, status
from ops.devstack import free_port
from ops.realcomfyui import RealComfyUI
from renders.models import ComfyInstance, RenderAttempt
from renders.routing import fleet_hosts_capable
from tests.conftest import wait_for
from tests.fleets.conftest import make_asset, make_bundle
from tests.ops.test_two_hosts import files_written, host_env
from tests.realcomfyui import ensure_installed
from tests.renders.test_crashes import report
from tests.s3server import S3Server
from workflows.models import Style, Workflow
from workflows.services import version_create

Status = BookPage.Status
NODE_SOURCE = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui" / "fleet_tint" / "__init__.py"
NODE_CLASS = "FleetTestTint"
MODEL_NAME = "fleet-tint.safetensors"
RED, BLUE = (200, 30, 30), (30, 60, 200)
# How often a host's sync looks at the fleet (its timer, here every second), and how often it
# repeats its report while an apply runs.
TICK_SEC = 1.0
# The maintenance worker's: a silent host is stale after 5 s and offline after 10 s.
STALE_SEC, OFFLINE_SEC = 5, 10
# Phase 3's pages each hold ComfyUI this long: host a is silenced while it has two of them, one
# running and one queued behind it, so at least one is lost whatever the timing.
HOLD_SEC = 3.0
# Every render process: a pure fleet (no COMFYUI_URLS), short leases and retries so a lost page
# comes back within seconds.
RENDER_ENV = {
    "COMFYUI_URLS": "",
    "COMFY_LEASE_SEC": "3",
    "COMFY_RETRY_BACKOFF_SEC": "1",
    "COMFY_POLL_INTERVAL_SEC": "0.5",
}
# A real ComfyUI 0.3.64's /object_info, recorded (the simulator serves it): what the first
# assignment is checked against, before any ComfyUI of the fleet is up.
CORE_OBJECT_INFO = json.loads(OBJECT_INFO_PATH.read_text())

GRAPH = {
    "1": {
        "class_type": NODE_CLASS,
        "inputs": {
            "ckpt_name": MODEL_NAME,
            "width": "{{WIDTH}}",
            "height": "{{HEIGHT}}",
            "seed": "{{SEED}}",
            "hold_seconds": "{{HOLD}}",
        },
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{FILENAME_PREFIX}}"}},
    "3": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "{{PROMPT}}"}},
}
PROPERTIES = [
    {"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True},
    {"name": "seed", "kind": "seed", "placeholder": "SEED", "min": 0, "max": 4294967295},
    {"name": "width", "kind": "integer", "placeholder": "WIDTH", "default": 64, "min": 8, "max": 512},
    {"name": "height", "kind": "integer", "placeholder": "HEIGHT", "default": 64, "min": 8, "max": 512},
    {"name": "hold", "kind": "float", "placeholder": "HOLD", "default": 0.0, "min": 0.0, "max": 30.0},
]


def tint_model(colour: tuple[int, int, int]) -> bytes:
    """The node's "model": b"TINT" and the colour, padded to 256 KiB."""
    return b"TINT" + bytes(colour) + bytes(256 * 1024)


def node_archive(tmp_path: Path, version: int) -> bytes:
    """FleetTestTint at ``version`` the way people ship custom nodes: a git archive (tar.gz) of its
    repository."""
    repo = tmp_path / f"fleet-test-tint-v{version}"
    repo.mkdir()
    source = NODE_SOURCE.read_text()
    assert "\nVERSION = 1\n" in source
    (repo / "__init__.py").write_text(source.replace("\nVERSION = 1\n", f"\nVERSION = {version}\n"))

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=tests", "-c", "user.email=tests@bookrender.invalid", "commit", "-qm", f"v{version}")
    return git("archive", "--format=tar.gz", "HEAD")


class HostComfyUI(RealComfyUI):
    def start(self) -> None:
        # Under comfyui@.service the assets tree is read-only to ComfyUI (ProtectSystem=strict).
        # Here it is not, and the __pycache__ Python would write into the node's folder would
        # make the tree look changed to the host's next apply.
        env = os.environ | {
            "CUI_DATA_DIR": str(self.data_dir),
            "CUI_PORT_BASE": str(self.port),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.launcher), "0", "--cpu", *self.args], stdout=log, stderr=subprocess.STDOUT, env=env
            )


class ComfyUnit:
    """A host's comfyui@0.service: its ComfyUI reads custom nodes and checkpoints from the host's
    ``current`` tree. ``restart_command`` (the host's BOOKRENDER_RESTART_COMMAND) asks this unit,
    over a loopback port, to stop ComfyUI, start it again and wait until it answers."""

    def __init__(self, *, launcher: Path, root: Path, home: Path) -> None:
        paths = root / "extra_model_paths.yaml"
        current = json.dumps(str(home / "current"))
        paths.write_text(
            f"host:\n  base_path: {current}\n  custom_nodes: custom_nodes/\n  checkpoints: models/checkpoints/\n"
        )
        self.comfy = HostComfyUI(launcher, root / "comfyui", free_port(), ["--extra-model-paths-config", str(paths)])
        self.starts: list[float] = []  # seconds from the restart request to ComfyUI answering
        self._lock = threading.Lock()
        unit = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                try:
                    unit.restart()
                    code, body = 200, b"restarted\n"
                except Exception as exc:  # the restart command exits 1 and says why
                    code, body = 500, str(exc).encode()[-2000:]
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="comfy-unit", daemon=True).start()
        control = f"http://127.0.0.1:{self._server.server_address[1]}/restart"
        request = "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='POST'), timeout=600)"
        script = root / "restart-comfyui"
        script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(request)} {control}\n")
        script.chmod(0o755)
        self.restart_command = str(script)

    @property
    def url(self) -> str:
        return self.comfy.url

    def restart(self) -> None:
        with self._lock:
            began = time.monotonic()
            self.comfy.stop()
            self.comfy.start()
            self.comfy.wait_ready()
            self.starts.append(round(time.monotonic() - began, 1))

    def kill(self) -> None:
        if self.comfy.process is not None and self.comfy.process.poll() is None:
            self.comfy.kill9()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.comfy.stop()


class HostSync:
    """A host's asset sync, every TICK_SEC: an apply with the real client (ops.assetsync.apply,
    registering with the fleet secret) when the fleet's pointer is not the bundle the host has
    applied; otherwise a heartbeat (ready, with its applied bundle), whose answer is the pointer.
    With ``follow`` cleared it only heartbeats: the host's next sync is not due yet."""

    def __init__(self, server: Server, opts: Options) -> None:
        self.server, self.opts = server, opts
        self.follow = threading.Event()
        self.follow.set()
        self.pointer: int | None = None  # the fleet's active bundle, as the last heartbeat answered
        self.failed_applies = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sync-{server.host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            applied = status(self.opts.home)["active_bundle_id"]
            try:
                if self.follow.is_set() and (applied is None or applied != self.pointer):
                    if apply(self.server, self.opts) != 0:
                        self.failed_applies += 1
                        self.follow.clear()  # the test fails on it; do not restart ComfyUI in a loop
                    self.pointer = status(self.opts.home)["active_bundle_id"]
                else:
                    self.pointer = self._heartbeat(applied)
            except (SyncError, requests.RequestException) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            if self._stop.wait(TICK_SEC):
                return

    def _heartbeat(self, applied: int | None) -> int | None:
        readings = [{"url": url, "gpu_index": n} for n, url in enumerate(self.opts.instances)]
        answer = self.server.session.post(
            self.server.url + "/fleets/api/heartbeat",
            json={"state": "ready", "applied_bundle_id": applied, "instances": readings},
            headers={"Authorization": f"Bearer {self.server.token}"},
            timeout=30,
        )
        answer.raise_for_status()
        pointer: int | None = answer.json()["active_bundle_id"]
        return pointer

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


@dataclass
class GpuHost:
    name: str
    root: Path
    unit: ComfyUnit
    sync: HostSync
    worker: livestack.Process

    @property
    def url(self) -> str:
        return self.unit.url

    @property
    def home(self) -> Path:
        return self.sync.opts.home

    def log(self) -> list[dict[str, Any]]:
        path = self.home / LOG_NAME
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def apply_seconds(self) -> dict[int, float]:
        """Bundle id -> seconds each successful apply took, from the host's asset-sync log."""
        return {line["bundle_id"]: line["seconds"] for line in self.log() if line["event"] == "apply.done"}

    def row(self) -> Host:
        return Host.objects.get(name=f"gpu-{self.name}")

    def go_silent(self) -> None:
        """The host dies: ComfyUI first (the prompts it holds are lost), then its worker, then its sync."""
        self.unit.kill()
        self.worker.kill()
        self.sync.stop()


@pytest.fixture
def gpu_host(live: Any, s3: S3Server, fleet: Fleet, tmp_path: Path) -> Iterator[Callable[[str], GpuHost]]:
    """Start a host: its ComfyUI unit (ComfyUI starts when its first apply restarts it), its render
    worker (it starts consuming once its ComfyUI answers) and its sync, in fleet gpu-default."""
    launcher = Path(ensure_installed()["launcher"])
    started: list[GpuHost] = []

    def start(name: str) -> GpuHost:
        root = tmp_path / f"host-{name}"
        (root / "var" / "logs").mkdir(parents=True)
        home = root / "assets"
        home.mkdir()
        unit = ComfyUnit(launcher=launcher, root=root, home=home)
        env = host_env(root, s3, **RENDER_ENV, BOOKRENDER_WORKER_INSTANCES=unit.url)
        worker = livestack.start_worker(
            env=env, log=root / "var" / "logs" / "worker.log", concurrency=2, wait=False, hostname=f"gpu-{name}@%h"
        )
        server = Server(url=live.url, fleet=fleet.slug, secret=fleet.secret, host=f"gpu-{name}")
        opts = Options(
            home=home,
            instances=[unit.url],
            restart_command=unit.restart_command,
            drain_timeout=120,
            health_timeout=300,
            heartbeat_every=TICK_SEC,
        )
        host = GpuHost(name, root, unit, HostSync(server, opts), worker)
        started.append(host)
        return host

    yield start
    for host in started:
        host.sync.stop()
        host.worker.stop()
        host.unit.close()


def events(host: GpuHost) -> list[str]:
    return [line["event"] for line in host.log()]


def colour_of(page: BookPage) -> tuple[int, int, int]:
    with default_storage.open(str(page.image.name), "rb") as stored:
        image = Image.open(io.BytesIO(stored.read()))
        red, green, blue = image.convert("RGB").getpixel((8, 8))
        return red, green, blue


def pages_state(book: Any) -> str:
    rows = book.pages.order_by("number").values_list("number", "status", "retry_count", "image_error")
    return str([(n, s, r, [e.get("message", "")[:120] for e in errors]) for n, s, r, errors in rows])


def instance_ready(url: str) -> bool:
    instance = ComfyInstance.objects.select_related("host").filter(url=url).first()
    return bool(
        instance
        and instance.enabled
        and instance.state == ComfyInstance.State.UP
        and instance.host.state == Host.State.READY
    )


@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_work_goes_to_the_host_with_the_bundle_both_hosts_follow_the_next_and_a_silent_hosts_pages_finish_elsewhere(
    alice, fleet, live, s3, s3_assets, broker, start_beat, gpu_host, settings, tmp_path
):
    settings.COMFYUI_URLS = []  # a pure fleet: every instance comes from a host's registration
    began = time.monotonic()
    red, blue = make_asset(tint_model(RED), name=MODEL_NAME), make_asset(tint_model(BLUE), name=MODEL_NAME)
    nodes = [
        make_asset(
            node_archive(tmp_path, version),
            kind=Asset.Kind.CUSTOM_NODE,
            name="fleet-test-tint.tar.gz",
            node_classes=NODE_CLASS,
        )
        for version in (1, 2)
    ]
    bundle0, bundle1, bundle2 = (
        make_bundle("bundle-0", red),
        make_bundle("bundle-1", nodes[0], red),
        make_bundle("bundle-2", nodes[1], blue),
    )
    workflow = Workflow.objects.create(name="Fleet tint", slug="fleet-tint")
    version = version_create(workflow=workflow, graph=GRAPH, output_node="2", properties=PROPERTIES)
    Style.objects.create(name="Fleet tint", slug="fleet-tint", version=version)

    # Boot. Host b applies bundle 0; once it has read that manifest, bundle 1 goes live, the
    # workflow is assigned to the fleet, and host a boots and applies bundle 1.
    fleet_activate(fleet=fleet, bundle=bundle0, by="root")
    b = gpu_host("b")
    wait_for(lambda: "apply.start" in events(b), timeout=60, message=lambda: str(b.log()))
    b.sync.follow.clear()
    fleet_activate(fleet=fleet, bundle=bundle1, by="root")
    fleet_workflow_assign(fleet=fleet, workflow_slug="fleet-tint", object_info=CORE_OBJECT_INFO)
    a = gpu_host("a")
    start_beat(
        **RENDER_ENV,
        **s3.env(),
        BOOKRENDER_FLEET_HOST_STALE_SEC=str(STALE_SEC),
        BOOKRENDER_FLEET_HOST_OFFLINE_SEC=str(OFFLINE_SEC),
    )
    hosts = (a, b)
    for host, bundle in ((a, bundle1), (b, bundle0)):
        wait_for(
            lambda host=host, bundle=bundle: status(host.home)["active_bundle_id"] == bundle.pk,
            timeout=300,
            message=lambda host=host: f"host {host.name}: {host.log()[-5:]} {host.sync.errors[-3:]}",
        )
    for host in hosts:
        livestack.wait_ready(host.worker, timeout=120)
        wait_for(lambda host=host: instance_ready(host.url), timeout=120)
    booted = time.monotonic()

    # 1. Host b is ready, enabled and up, but behind the active bundle: only a may take the work.
    assert a.row().applied_bundle == bundle1 and b.row().applied_bundle == bundle0
    assert fleet_hosts_capable(workflow="fleet-tint") == {a.row().pk}
    first = book_create(
        owner=alice, title="Bundle 1", style="fleet-tint", pages=[PageSpec(f"page {n}") for n in range(1, 5)]
    )
    wait_for(
        lambda: not first.pages.exclude(status=Status.DONE).exists(), timeout=180, message=lambda: pages_state(first)
    )
    attempts = RenderAttempt.objects.filter(page__book=first)
    assert set(attempts.values_list("instance_url", flat=True)) == {a.url}
    assert all(colour_of(page) == RED for page in first.pages.all())
    wait_for(lambda: instance_ready(b.url), timeout=30)  # b was passed over for its bundle, not its health
    phase1 = time.monotonic()

    # 2. Bundle 2 goes live (checked against a live /object_info); both hosts follow.
    fleet_activate(fleet=fleet, bundle=bundle2, by="root")
    b.sync.follow.set()  # b's sync is due
    for host in hosts:
        wait_for(
            lambda host=host: host.row().applied_bundle_id == bundle2.pk and host.row().state == Host.State.READY,
            timeout=300,
            message=lambda host=host: f"host {host.name}: {host.log()[-5:]} {host.sync.errors[-3:]}",
        )
    followed = time.monotonic()
    for host, before in ((a, bundle1), (b, bundle0)):
        assert (host.home / ".active_bundle_id").read_text().strip() == str(bundle2.pk)
        assert status(host.home) == {
            "active_bundle_id": bundle2.pk,
            "previous_bundle_id": before.pk,
            "current": bundle2.pk,
            "intact": True,
        }
        assert host.row().applied_bundle.name == "bundle-2"
        loaded = requests.get(f"{host.url}/object_info/{NODE_CLASS}", timeout=60).json()[NODE_CLASS]
        assert loaded["description"] == "fleet test tint v2", host.name
        assert len(host.unit.starts) == 2, host.name  # its first start, and the restart for bundle 2
        assert host.sync.failed_applies == 0

    # 3. Host a goes silent while it holds two pages (one running, one queued behind it).
    for host in hosts:
        wait_for(lambda host=host: instance_ready(host.url), timeout=120)
    second = book_create(
        owner=alice,
        title="Bundle 2",
        style="fleet-tint",
        pages=[PageSpec(f"page {n}", overrides={"hold": HOLD_SEC}) for n in range(1, 9)],
    )
    on_a = RenderAttempt.objects.filter(
        page__book=second, instance_url=a.url, submitted_at__isnull=False, outcome=RenderAttempt.Outcome.RUNNING
    )
    wait_for(lambda: on_a.count() >= 2, timeout=180, interval=0.05, message=lambda: pages_state(second))
    a.go_silent()
    silent_at = time.monotonic()
    seen: dict[str, float] = {}  # when host a went offline, and when every page was Done

    def settled() -> bool:
        if "offline" not in seen and a.row().state == Host.State.OFFLINE:
            seen["offline"] = time.monotonic()
        if "done" not in seen and not second.pages.exclude(status=Status.DONE).exists():
            seen["done"] = time.monotonic()
        return len(seen) == 2

    wait_for(settled, timeout=300, message=lambda: f"{seen} {a.row().state} {pages_state(second)}")

    assert not ComfyInstance.objects.get(url=a.url).enabled
    succeeded = {
        attempt.page.number: attempt.instance_url
        for attempt in RenderAttempt.objects.filter(
            page__book=second, outcome=RenderAttempt.Outcome.SUCCESS
        ).select_related("page")
    }
    lost_on_a = sorted(
        set(
            RenderAttempt.objects.filter(page__book=second, instance_url=a.url)
            .exclude(outcome=RenderAttempt.Outcome.SUCCESS)
            .values_list("page__number", flat=True)
        )
    )
    assert sorted(succeeded) == list(range(1, 9))
    assert len(lost_on_a) >= 1
    assert all(succeeded[number] == b.url for number in lost_on_a), (lost_on_a, succeeded)
    for page in second.pages.all():
        assert page.image_attempt == page.attempt and colour_of(page) == BLUE
    for host in hosts:
        assert files_written(host.root / "var") == []  # page files went to the bucket
    # Hosts get blobs straight from the bucket (presigned URLs), never through bookrender.
    manifest = requests.get(
        live.url + "/fleets/api/manifest", headers={"Authorization": f"Bearer {b.sync.server.token}"}, timeout=30
    ).json()
    assert manifest["urls"] and all(url.startswith(s3.endpoint + "/") for url in manifest["urls"].values())
    worker_lost = sorted(
        number for number, meta in second.pages.values_list("number", "job_metadata") if meta.get("resumes")
    )

    names = {a.url: "a", b.url: "b"}
    bundle_names = {bundle0.pk: "bundle-0", bundle1.pk: "bundle-1", bundle2.pk: "bundle-2"}
    report(
        "fleet-two-hosts-real-comfyui",
        comfyui_start_s={host.name: host.unit.starts for host in hosts},
        apply_s={host.name: {bundle_names[k]: v for k, v in host.apply_seconds().items()} for host in hosts},
        boot_s=round(booted - began, 1),
        bundle1_pages=first.pages.count(),
        bundle1_submissions=attempts.filter(submitted_at__isnull=False).count(),
        bundle1_rendered_on=dict(Counter(names[url] for url in attempts.values_list("instance_url", flat=True))),
        bundle1_phase_s=round(phase1 - booted, 1),
        bundle2_follow_s=round(followed - phase1, 1),
        silent_pages=second.pages.count(),
        silent_submissions=RenderAttempt.objects.filter(page__book=second, submitted_at__isnull=False).count(),
        silent_rendered_on={number: names[url] for number, url in sorted(succeeded.items())},
        silent_lost_with_a_comfyui=lost_on_a,
        silent_resumed_after_a_worker_died=worker_lost,
        silent_to_all_done_s=round(seen["done"] - silent_at, 1),
        silent_to_offline_s=round(seen["offline"] - silent_at, 1),
        assets_in_bucket=len(s3_assets.list_objects_v2(Bucket=s3_assets.bucket, Prefix="assets/").get("Contents", [])),
        total_s=round(time.monotonic() - began, 1),
    )
