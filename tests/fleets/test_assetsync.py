"""ops/assetsync.py against a real bookrender (live server behind a proxy that can spoil
downloads) and the ComfyUI simulator as the host's instance."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fleets.models import Asset, Host
from fleets.services import fleet_activate, fleet_workflow_assign
from ops.assetsync import (
    Options,
    Server,
    SyncError,
    SyncLog,
    apply,
    extract_tar_gz,
    extract_zip,
    gc,
    main,
    status,
)
from tests.conftest import wait_for
from tests.fleets.conftest import make_asset, make_bundle, register_workflow
from workflows.services import workflow_graph

MODEL = bytes(range(256)) * 4096  # 1 MiB


def _git_archive(tmp_path: Path) -> bytes:
    """A custom node the way people ship them: a git archive of its repository."""
    repo = tmp_path / "fancy-node-src"
    repo.mkdir()
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (repo / "README.md").write_text("A test node.\n")

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "node")
    return git("archive", "--format=tar.gz", "HEAD")


@pytest.fixture
def host(flaky_proxy, fleet, simulator, tmp_path):
    fleet_workflow_assign(fleet=fleet, workflow_slug="model-free")
    server = Server(url=flaky_proxy.url, fleet=fleet.slug, secret=fleet.secret, host="gpu-a")
    opts = Options(home=tmp_path / "host-a", instances=[simulator.url], drain_timeout=60, health_timeout=60)
    opts.home.mkdir()
    return server, opts


def _log(opts: Options) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (opts.home / "comfyui-asset-sync.log").read_text().splitlines()]


def _events(opts: Options) -> list[str]:
    return [line["event"] for line in _log(opts)]


def test_it_applies_a_bundle_and_a_second_apply_does_nothing(host, fleet, object_info, tmp_path):
    server, opts = host
    model = make_asset(MODEL, name="tiny.safetensors")
    node = make_asset(_git_archive(tmp_path), kind=Asset.Kind.CUSTOM_NODE, name="fancy-node.tar.gz")
    bundle = make_bundle("b1", model, node)
    fleet_activate(fleet=fleet, bundle=bundle, by="root", object_info=object_info)

    dry = Options(**{**opts.__dict__, "dry_run": True})
    assert apply(server, dry) == 0
    assert sorted(p.name for p in opts.home.iterdir()) == ["comfyui-asset-sync.log"]  # nothing else changed
    assert [line["event"] for line in _log(opts)].count("apply.would") == 2
    assert not Host.objects.filter(name="gpu-a").exists()  # a dry run registers nothing

    assert apply(server, opts) == 0
    current = opts.home / "current"
    assert (current / "models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    assert (current / "custom_nodes/fancy-node/__init__.py").exists()
    assert (opts.home / ".active_bundle_id").read_text().strip() == str(bundle.pk)
    assert status(opts.home) == {
        "active_bundle_id": bundle.pk,
        "previous_bundle_id": None,
        "current": bundle.pk,
        "intact": True,
    }
    assert Host.objects.get(name="gpu-a").applied_bundle == bundle

    # ComfyUI importing the custom node writes bytecode beside it: derived files, still intact.
    (current / "custom_nodes/fancy-node/__pycache__").mkdir()
    (current / "custom_nodes/fancy-node/__pycache__/__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
    before = len(_log(opts))
    assert apply(server, opts) == 0
    assert [line["event"] for line in _log(opts)[before:]] == ["apply.nothing_to_do"]


def test_a_cut_download_resumes_and_a_corrupt_one_is_downloaded_again(host, fleet, object_info, flaky_proxy):
    server, opts = host
    fleet_activate(fleet=fleet, bundle=make_bundle("b1", make_asset(MODEL)), by="root", object_info=object_info)
    flaky_proxy.faults = ["cut", "corrupt"]

    assert apply(server, opts) == 0
    assert (opts.home / "current/models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    events = _events(opts)
    assert events.index("download.interrupted") < events.index("download.resume") < events.index("download.corrupt")
    assert events.index("download.corrupt") < events.index("download.verified")
    # The second request asked only for the rest; the third, after the corrupt copy was deleted, for all.
    assert flaky_proxy.ranges[0] == "" and flaky_proxy.ranges[1].startswith("bytes=") and flaky_proxy.ranges[2] == ""
    assert flaky_proxy.ranges[1] != "bytes=0-"


def test_a_bundle_whose_health_gate_fails_is_rolled_back(host, fleet, object_info, settings, tmp_path):
    server, opts = host
    first = make_bundle("b1", make_asset(MODEL))
    fleet_activate(fleet=fleet, bundle=first, by="root", object_info=object_info)
    assert apply(server, opts) == 0
    # A workflow that needs a node class the bundle's custom node promises, which ComfyUI lacks:
    # the bundle that carries the node goes live, then the workflow is assigned.
    register_workflow("fancy", "FleetTestNoise")
    node = make_asset(
        _git_archive(tmp_path), kind=Asset.Kind.CUSTOM_NODE, name="fancy.tar.gz", node_classes="FleetTestNoise"
    )
    second = make_bundle("b2", make_asset(MODEL), node)
    fleet_activate(fleet=fleet, bundle=second, by="root", object_info=object_info)
    fleet_workflow_assign(fleet=fleet, workflow_slug="fancy", object_info=object_info)
    assert apply(server, opts) == 1
    assert status(opts.home)["current"] == first.pk
    assert (opts.home / ".active_bundle_id").read_text().strip() == str(first.pk)
    failed = [line for line in _log(opts) if line["event"] == "apply.failed"]
    assert "FleetTestNoise" in failed[-1]["error"]
    assert "rollback.done" in _events(opts)
    # The rollback's gate asked for every needed class the instance had before the switch: all
    # but the failed bundle's FleetTestNoise.
    needed = {node["class_type"] for slug in ("model-free", "fancy") for node in workflow_graph(slug).values()}
    gates = [line for line in _log(opts) if line["event"] == "health.ok"]
    assert gates[-1]["node_classes"] == {opts.instances[0]: len(needed - {"FleetTestNoise"})}
    host_row = Host.objects.get(name="gpu-a")
    assert (host_row.state, host_row.applied_bundle) == ("failed", first)
    assert "FleetTestNoise" in host_row.last_error

    # The next run (the timer's) does not switch and restart again for the same failed bundle.
    before = len(_log(opts))
    assert apply(server, opts) == 1
    assert _events(opts)[before:] == ["apply.skipped"]
    assert status(opts.home)["current"] == first.pk
    retry = Options(**{**opts.__dict__, "retry_failed": True})  # an operator's --retry-failed
    assert apply(server, retry) == 1
    assert "switch.done" in _events(opts)[before:] and status(opts.home)["current"] == first.pk


def test_a_host_keeps_reporting_while_an_apply_takes_long(host, fleet, object_info, tmp_path):
    """A slow restart (here one held until the test lets it go) or a long download does not make
    the host look silent: it reports applying, and repeats that until the apply ends."""
    server, opts = host
    release = tmp_path / "release"
    opts.restart_command = f"while [ ! -e {release} ]; do sleep 0.1; done"
    opts.heartbeat_every = 0.5
    fleet_activate(fleet=fleet, bundle=make_bundle("b1", make_asset(MODEL)), by="root", object_info=object_info)
    codes: list[int] = []
    applying = threading.Thread(target=lambda: codes.append(apply(server, opts)))
    applying.start()
    try:
        log = opts.home / "comfyui-asset-sync.log"
        wait_for(lambda: log.exists() and "switch.done" in _events(opts), timeout=60)
        held = Host.objects.get(name="gpu-a")
        assert held.state == Host.State.APPLYING
        wait_for(lambda: Host.objects.get(pk=held.pk).last_seen_at > held.last_seen_at, timeout=30)
        assert Host.objects.get(pk=held.pk).state == Host.State.APPLYING
    finally:
        release.touch()
        applying.join(timeout=120)
    assert codes == [0]
    assert Host.objects.get(name="gpu-a").state == Host.State.READY


def test_a_hostile_archive_is_refused_and_nothing_changes(host, fleet, object_info, tmp_path):
    server, opts = host
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w:gz") as tf:
        data = b"owned"
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))
    node = make_asset(hostile.getvalue(), kind=Asset.Kind.CUSTOM_NODE, name="evil.tar.gz")
    fleet_activate(fleet=fleet, bundle=make_bundle("evil", node), by="root", object_info=object_info)

    assert apply(server, opts) == 1
    assert not list(tmp_path.rglob("escaped.txt"))
    assert status(opts.home)["current"] is None and not (opts.home / ".active_bundle_id").exists()
    assert os.readlink(opts.home / "current") == "bundles/empty"  # nothing of the bundle: the empty tree
    assert "'..'" in [line for line in _log(opts) if line["event"] == "apply.failed"][-1]["error"]


def test_a_first_bundle_that_fails_its_gate_leaves_the_empty_tree_comfyui_can_start_on(
    host, fleet, object_info, tmp_path
):
    server, opts = host
    assert main(["--home", str(opts.home), "init"], out=lambda line: None) == 0  # before ComfyUI first starts
    assert sorted(p.name for p in (opts.home / "current").iterdir()) == ["custom_nodes", "input", "models"]
    register_workflow("fancy", "FleetTestNoise")
    node = make_asset(
        _git_archive(tmp_path), kind=Asset.Kind.CUSTOM_NODE, name="fancy.tar.gz", node_classes="FleetTestNoise"
    )
    fleet_activate(fleet=fleet, bundle=make_bundle("b1", node), by="root", object_info=object_info)
    fleet_workflow_assign(fleet=fleet, workflow_slug="fancy", object_info=object_info)

    assert apply(server, opts) == 1  # the simulator lacks FleetTestNoise: the gate fails
    assert os.readlink(opts.home / "current") == "bundles/empty"
    assert (opts.home / "current/custom_nodes").is_dir() and not any((opts.home / "current/custom_nodes").iterdir())
    assert _events(opts)[-2:] == ["health.ok", "rollback.done"]
    assert _log(opts)[-1]["bundle_id"] == "empty"
    assert "empty" not in [Path(p).name for p in gc(opts.home, log=SyncLog(opts.home / "log"), dry_run=True)]


def _zip(name: str, *, link: bool = False) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd" if link else "x")
    return buffer  # type: ignore[return-value]


@pytest.mark.parametrize(("name", "link"), [("/abs.txt", False), ("a/../../up.txt", False), ("link", True)])
def test_zip_archives_with_absolute_paths_dots_or_links_are_refused(tmp_path, name, link):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip(name, link=link).getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(SyncError):
        extract_zip(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_tar_archives_with_links_out_are_refused(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        member = tarfile.TarInfo("models")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc"
        tf.addfile(member)
    (tmp_path / "out").mkdir()
    with pytest.raises(SyncError, match="link"):
        extract_tar_gz(archive, tmp_path / "out")


def test_gc_keeps_the_current_and_previous_bundles(tmp_path):
    home = tmp_path / "home"
    for bundle_id, sha in ((1, "a" * 64), (2, "b" * 64), (3, "c" * 64)):
        tree = home / "bundles" / str(bundle_id)
        tree.mkdir(parents=True)
        (tree / ".manifest.json").write_text(json.dumps({"entries": [{"sha256": sha}]}))
        (home / "cache").mkdir(exist_ok=True)
        (home / "cache" / sha).write_bytes(b"x")
    (home / ".active_bundle_id").write_text("3\n")
    (home / ".previous_bundle_id").write_text("2\n")
    (home / "current").symlink_to("bundles/3")
    removed = gc(home, log=SyncLog(home / "log"), dry_run=False)
    assert sorted(removed) == ["bundles/1", "cache/" + "a" * 64]
    assert sorted(p.name for p in (home / "bundles").iterdir()) == ["2", "3"]


def test_a_host_downloads_from_s3_through_presigned_urls(host, fleet, object_info, s3_assets, flaky_proxy):
    server, opts = host
    fleet_activate(fleet=fleet, bundle=make_bundle("b1", make_asset(MODEL)), by="root", object_info=object_info)

    assert apply(server, opts) == 0
    assert (opts.home / "current/models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    assert flaky_proxy.ranges == []  # the bytes came from the bucket, not through bookrender
