"""Apply a fleet's active bundle on a GPU host: ``python -m ops.assetsync apply|status|gc``.

Run by comfyui-asset-sync.service at boot and whenever the fleet's pointer changes. Needs only
``requests`` (no Django): it talks to bookrender over HTTP.

The host's folder (``--home``, BOOKRENDER_ASSETS_HOME; ``init`` or the first apply makes it)::

    cache/<sha256>          verified blobs (cache/<sha256>.part while downloading)
    bundles/<id>/           one staged tree per bundle: models/, custom_nodes/, input/
    bundles/empty/          the same folders, empty: current before a first bundle is applied
    current -> bundles/<id> what ComfyUI reads (extra_model_paths.yaml, --input-directory)
    .previous_bundle_id     the bundle a rollback returns to
    .failed_bundle_id       a bundle that failed its switch here: later runs skip it (--retry-failed)
    .active_bundle_id       written last: the bundle applied and healthy
    comfyui-asset-sync.log  JSON lines, one per step

apply, as an algorithm:

1. Register with the fleet (HMAC of the fleet secret over timestamp, nonce and body); get a token.
   A dry run registers nothing: the same signed request, marked ``dry_run``, answers the manifest.
2. Fetch the active bundle's manifest; check its sha256 against the one bookrender recorded.
3. Nothing to do when ``.active_bundle_id`` names it, ``current`` points at it and its tree is intact.
4. Report ``applying`` (bookrender routes no new work here) and repeat the latest report every
   ``--heartbeat-every`` seconds until the apply ends: a long download or a slow restart must not
   look like a silent host (stale, then offline: its instances disabled).
5. Download each blob into the cache: a ``.part`` file resumes with Range; every byte is checked
   against the sha256, a mismatch is deleted and downloaded again (3 tries).
6. Stage ``bundles/<id>``: hardlink (or copy) blobs into place, extract archives refusing absolute
   paths, ``..`` and links; record the tree; rename into place.
7. Drain: wait for each instance's queue to empty.
8. Switch ``current`` atomically (a new symlink renamed over the old), run the restart command,
   and health-gate every instance: /system_stats answers and /object_info has every node class
   the fleet's workflows use.
9. On any failure in 8, switch back to the previous bundle, restart, gate again (every needed
   node class each instance had before the switch must be back), and report the failure. On
   success write ``.previous_bundle_id``, then ``.active_bundle_id``; collect garbage.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import requests

LOG_NAME = "comfyui-asset-sync.log"
CHUNK = 1024 * 1024
# Small reads from the network: a connection cut mid-body loses at most this much of the download.
NET_CHUNK = 64 * 1024
DOWNLOAD_TRIES = 3
HTTP_TIMEOUT = 30.0
# While an apply runs, the host repeats its latest report this often (--heartbeat-every): well
# within BOOKRENDER_FLEET_HOST_STALE_SEC, so an apply never makes the host look silent.
HEARTBEAT_EVERY_SEC = 20.0


class SyncError(Exception):
    """An apply that cannot go on; the message says what and where."""


def sign(*, secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    """The registration signature (fleets/hosts.py checks it): HMAC-SHA256 of the fleet secret."""
    message = f"{timestamp}\n{nonce}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# --- The log --------------------------------------------------------------------------------------


class SyncLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        text = json.dumps(line, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(text + "\n")
        print(text, flush=True)


# --- Talking to bookrender ------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    fleet: str
    secret: str
    host: str
    token: str = ""
    session: requests.Session = field(default_factory=requests.Session)
    # The latest heartbeat body and when it was sent, for ``keep_reporting``; the lock keeps a
    # repeat from overtaking a newer report.
    _report: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _reported_at: float = field(default=0.0, init=False, repr=False)
    _report_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def register(self) -> None:
        response = self._signed_post("/fleets/api/register", {"host": self.host})
        if response.status_code != 200:
            raise SyncError(
                f"registration with {self.url} as {self.fleet}/{self.host} refused ({response.status_code})"
            )
        self.token = response.json()["token"]

    def preview(self) -> dict[str, Any]:
        """What ``manifest`` answers, for a dry run: signed with the fleet secret, registering
        nothing (a registration would give the host a new token under the running host's feet)."""
        response = self._signed_post("/fleets/api/register", {"host": self.host, "dry_run": True})
        if response.status_code != 200:
            raise SyncError(f"dry run: {self.url} answered {response.status_code} {response.text[:300]}")
        data: dict[str, Any] = response.json()
        return data

    def _signed_post(self, path: str, payload: dict[str, Any]) -> requests.Response:
        body = json.dumps(payload).encode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        headers = {
            "Content-Type": "application/json",
            "X-Fleet": self.fleet,
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": sign(
                secret=self.secret, timestamp=timestamp, nonce=nonce, method="POST", path=path, body=body
            ),
        }
        return self.session.post(self.url + path, data=body, headers=headers, timeout=HTTP_TIMEOUT)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def manifest(self) -> dict[str, Any]:
        response = self.session.get(self.url + "/fleets/api/manifest", headers=self._auth(), timeout=HTTP_TIMEOUT)
        if response.status_code != 200:
            raise SyncError(f"manifest: {response.status_code} {response.text[:300]}")
        data: dict[str, Any] = response.json()
        return data

    def heartbeat(self, *, state: str, applied: int | None, instances: list[str], **extra: Any) -> None:
        readings = [{"url": url, "gpu_index": index} for index, url in enumerate(instances)]
        body = {"state": state, "applied_bundle_id": applied, "instances": readings, **extra}
        with self._report_lock:
            self._report = body
            self._post_heartbeat(body, self.session)

    def _post_heartbeat(self, body: dict[str, Any], session: requests.Session) -> None:
        response = session.post(
            self.url + "/fleets/api/heartbeat", json=body, headers=self._auth(), timeout=HTTP_TIMEOUT
        )
        if response.status_code != 200:
            raise SyncError(f"heartbeat: {response.status_code} {response.text[:300]}")
        self._reported_at = time.monotonic()

    @contextmanager
    def keep_reporting(self, *, every: float) -> Iterator[None]:
        """Repeat the latest heartbeat whenever ``every`` seconds pass without one, until the block
        ends. A report that fails is tried again at the next turn: the apply goes on regardless."""
        stop = threading.Event()
        session = requests.Session()  # the apply's own session may be in the middle of a download

        def repeat() -> None:
            while not stop.wait(min(1.0, every)):
                with self._report_lock:
                    if self._report is None or time.monotonic() - self._reported_at < every:
                        continue
                    try:
                        self._post_heartbeat(self._report, session)
                    except (SyncError, requests.RequestException):
                        pass

        thread = threading.Thread(target=repeat, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            session.close()

    def open_blob(self, url: str, start: int) -> requests.Response:
        # Presigned S3 URLs carry their own authority; a bookrender URL takes the host's token.
        headers = self._auth() if url.startswith(self.url) else {}
        if start:
            headers["Range"] = f"bytes={start}-"
        return self.session.get(url, headers=headers, stream=True, timeout=HTTP_TIMEOUT)


# --- Downloads ------------------------------------------------------------------------------------


def _hash_file(path: Path, sha: Any = None) -> Any:
    sha = sha or hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            sha.update(chunk)
    return sha


def blob_fetch(*, server: Server, cache: Path, entry: dict[str, Any], url: str, log: SyncLog) -> Path:
    """The verified blob in the cache: downloaded, resumed or re-downloaded as needed."""
    sha256, size = str(entry["sha256"]), int(entry["size"])
    blob = cache / sha256
    if blob.exists() and blob.stat().st_size == size:
        return blob  # verified when it was renamed into place
    part = cache / f"{sha256}.part"
    cache.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        try:
            if have < size:
                with server.open_blob(url, have) as response:
                    if have and response.status_code == 206:
                        log("download.resume", sha256=sha256, offset=have, attempt=attempt)
                    elif response.status_code == 200:
                        have = 0  # the server sent it all: start again
                    else:
                        raise SyncError(f"blob {sha256}: HTTP {response.status_code}")
                    with part.open("ab" if have else "wb") as out:
                        for chunk in response.iter_content(NET_CHUNK):
                            out.write(chunk)
        except (requests.RequestException, OSError) as exc:
            log("download.interrupted", sha256=sha256, attempt=attempt, error=str(exc)[:300])
            continue
        got = part.stat().st_size if part.exists() else 0
        if got < size:
            log("download.short", sha256=sha256, attempt=attempt, have=got, size=size)
            continue
        actual = _hash_file(part).hexdigest()
        if got != size or actual != sha256:
            log("download.corrupt", sha256=sha256, attempt=attempt, got_sha256=actual, size=got)
            part.unlink()
            continue
        part.chmod(0o444)
        os.replace(part, blob)
        log("download.verified", sha256=sha256, size=size, attempt=attempt)
        return blob
    raise SyncError(f"blob {sha256} ({entry['target_path']}): no verified copy after {DOWNLOAD_TRIES} tries")


# --- Staging --------------------------------------------------------------------------------------


def _safe_member(root: Path, name: str) -> Path:
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise SyncError(f"archive member {name!r}: absolute path or '..'")
    target = (root / pure).resolve()
    if not target.is_relative_to(root.resolve()):
        raise SyncError(f"archive member {name!r} would land outside {root}")
    return target


def extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _safe_member(into, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SyncError(f"archive member {info.filename!r} is a link")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def extract_tar_gz(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:gz") as tf:
        members = tf.getmembers()
        targets = []
        for member in members:
            targets.append(_safe_member(into, member.name))
            if not (member.isfile() or member.isdir()):
                raise SyncError(f"archive member {member.name!r} is a link or device, not a file")
        # Written by hand, as the zip is: only files and folders, no owner, no set-uid bits, on every
        # Python 3.11 (tarfile's extraction filters came in 3.11.4).
        for member, target in zip(members, targets, strict=True):
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tf.extractfile(member)
            if source is None:
                raise SyncError(f"archive member {member.name!r} has no data")
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)


def _place(blob: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, target)  # same file system: no copy at all
    except OSError:
        shutil.copyfile(blob, target)


def _tree(root: Path) -> dict[str, int]:
    """Every file of a staged tree and its size. Python's bytecode caches are left out: ComfyUI
    writes them into ``__pycache__`` when it imports a custom node (where it may write), and they
    are derived from files that are recorded."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and p.name not in (".tree.json", ".manifest.json")
        and "__pycache__" not in p.relative_to(root).parts
    }


def bundle_stage(*, home: Path, manifest: dict[str, Any], blobs: dict[str, Path], log: SyncLog) -> Path:
    bundle_id = manifest["bundle_id"]
    final = home / "bundles" / str(bundle_id)
    staging = home / "bundles" / f"{bundle_id}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for entry in manifest["entries"]:
        target = _safe_member(staging, entry["target_path"])
        blob = blobs[entry["sha256"]]
        if entry["action"] == "copy":
            _place(blob, target)
        elif entry["action"] == "extract_zip":
            target.mkdir(parents=True, exist_ok=True)
            extract_zip(blob, target)
        elif entry["action"] == "extract_tar_gz":
            target.mkdir(parents=True, exist_ok=True)
            extract_tar_gz(blob, target)
        else:
            raise SyncError(f"unknown action {entry['action']!r} for {entry['target_path']}")
    for folder in ("models", "custom_nodes", "input"):
        (staging / folder).mkdir(exist_ok=True)
    (staging / ".manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    (staging / ".tree.json").write_text(json.dumps(_tree(staging), sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    log("stage.done", bundle_id=bundle_id, files=len(_tree(final)))
    return final


def tree_intact(path: Path) -> bool:
    record = path / ".tree.json"
    return record.exists() and json.loads(record.read_text()) == _tree(path)


# --- The switch and the health gate ---------------------------------------------------------------


def _read_id(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_id(path: Path, value: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def switch(home: Path, bundle_id: int | str) -> None:
    link = home / "current"
    new = home / "current.new"
    if new.is_symlink() or new.exists():
        new.unlink()
    new.symlink_to(Path("bundles") / str(bundle_id))
    os.replace(new, link)  # rename(2): ComfyUI sees the old tree or the new one, never half of each


# A tree with the folders ComfyUI reads and nothing in them: ``current`` before the first bundle is
# applied, and after a first bundle fails with none to go back to. ComfyUI 0.3.64 does not start
# when a custom_nodes folder its extra_model_paths.yaml names is missing.
EMPTY = "empty"


def init(home: Path) -> bool:
    """Give a host with no ``current`` one: the empty tree. True if it made it."""
    if (home / "current").is_symlink():
        return False
    for folder in ("models", "custom_nodes", "input"):
        (home / "bundles" / EMPTY / folder).mkdir(parents=True, exist_ok=True)
    switch(home, EMPTY)
    return True


def current_target(home: Path) -> int | None:
    link = home / "current"
    if not link.is_symlink():
        return None
    try:
        return int(Path(os.readlink(link)).name)
    except ValueError:
        return None


def instance_queue(url: str) -> int:
    response = requests.get(url + "/prompt", timeout=HTTP_TIMEOUT)
    response.raise_for_status()
    return int(response.json()["exec_info"]["queue_remaining"])


def drain(instances: list[str], *, timeout: float, log: SyncLog) -> None:
    deadline = time.monotonic() + timeout
    for url in instances:
        while True:
            try:
                remaining = instance_queue(url)
            except (requests.RequestException, KeyError, ValueError):
                break  # not answering: nothing to drain
            if remaining == 0:
                break
            if time.monotonic() > deadline:
                raise SyncError(f"drain: {url} still has {remaining} prompts after {timeout:.0f} s")
            time.sleep(1)
    log("drain.done", instances=instances)


def node_classes_of(url: str) -> set[str]:
    """The node classes an instance has loaded (its /object_info)."""
    response = requests.get(url + "/object_info", timeout=max(HTTP_TIMEOUT, 60))
    response.raise_for_status()
    return set(response.json())


def classes_before(instances: list[str], needed: list[str]) -> dict[str, list[str]]:
    """Per instance, the needed node classes it has now, before a switch: what a rollback must
    bring back. An instance that does not answer has nothing to bring back."""
    found: dict[str, list[str]] = {}
    for url in instances:
        try:
            found[url] = sorted(set(needed) & node_classes_of(url))
        except (requests.RequestException, ValueError):
            found[url] = []
    return found


def health_problem(url: str, node_classes: list[str]) -> str | None:
    try:
        requests.get(url + "/system_stats", timeout=HTTP_TIMEOUT).raise_for_status()
        known = node_classes_of(url)
    except (requests.RequestException, ValueError) as exc:
        return f"{url}: {exc}"
    missing = sorted(set(node_classes) - known)
    return f"{url}: /object_info lacks {', '.join(missing)}" if missing else None


def health_gate(
    instances: list[str], node_classes: list[str] | dict[str, list[str]], *, timeout: float, log: SyncLog
) -> None:
    """Every instance healthy with every needed node class (one list for all, or one per
    instance), within ``timeout``; SyncError if not. A restarting ComfyUI refuses connections for
    a while, so answers are awaited; a server that answers without a needed class is final."""
    deadline = time.monotonic() + timeout
    for url in instances:
        needed = node_classes.get(url, []) if isinstance(node_classes, dict) else node_classes
        while (problem := health_problem(url, needed)) is not None:
            if "lacks" in problem or time.monotonic() > deadline:
                raise SyncError(f"health gate: {problem}")
            time.sleep(1)
    counts = {url: len(node_classes.get(url, [])) for url in instances} if isinstance(node_classes, dict) else None
    log("health.ok", instances=instances, node_classes=counts if counts is not None else len(node_classes))


def restart(command: str, log: SyncLog) -> None:
    if not command:
        return
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise SyncError(f"restart command exited {result.returncode}: {result.stderr.strip()[-300:]}")
    log("restart.done", command=command)


# --- The commands ---------------------------------------------------------------------------------


@dataclass
class Options:
    home: Path
    instances: list[str]
    restart_command: str = ""
    drain_timeout: float = 600
    health_timeout: float = 300
    dry_run: bool = False
    heartbeat_every: float = HEARTBEAT_EVERY_SEC
    # A bundle that failed its switch (drain, restart or health gate) is not tried again by later
    # runs, which would restart ComfyUI twice every time, until the fleet points elsewhere or this.
    retry_failed: bool = False


def apply(server: Server, opts: Options) -> int:
    """The algorithm in the module docstring; 0 when the bundle is applied, 1 when not (and the
    previous one is back)."""
    home = opts.home
    log = SyncLog(home / LOG_NAME)
    started = time.monotonic()
    if opts.dry_run:
        data = server.preview()
    else:
        init(home)  # a first boot: ComfyUI may start before any bundle is applied
        server.register()
        data = server.manifest()
    raw = data["manifest"].encode()
    if hashlib.sha256(raw).hexdigest() != data["manifest_sha256"]:
        raise SyncError("the manifest does not match its recorded sha256")
    manifest = json.loads(raw)
    bundle_id = int(manifest["bundle_id"])
    active = _read_id(home / ".active_bundle_id")
    if active == bundle_id and current_target(home) == bundle_id and tree_intact(home / "bundles" / str(bundle_id)):
        log("apply.nothing_to_do", bundle_id=bundle_id)
        if not opts.dry_run:
            server.heartbeat(state="ready", applied=bundle_id, instances=opts.instances)
        return 0
    failed = _read_id(home / ".failed_bundle_id")
    if failed == bundle_id and not opts.retry_failed:
        note = f"bundle {bundle_id} failed its switch on this host before; not tried again (--retry-failed)"
        log("apply.skipped", bundle_id=bundle_id, note=note)
        if not opts.dry_run:
            server.heartbeat(state="failed", applied=active, instances=opts.instances, error=note)
        return 1
    log("apply.start", bundle_id=bundle_id, active=active, entries=len(manifest["entries"]), dry_run=opts.dry_run)
    if opts.dry_run:
        for entry in manifest["entries"]:
            cached = (home / "cache" / entry["sha256"]).exists()
            log("apply.would", target_path=entry["target_path"], action=entry["action"], cached=cached)
        return 0
    server.heartbeat(state="applying", applied=active, instances=opts.instances)
    with server.keep_reporting(every=opts.heartbeat_every):
        return _apply_new(server, opts, log, data=data, manifest=manifest, active=active, started=started)


def _apply_new(
    server: Server,
    opts: Options,
    log: SyncLog,
    *,
    data: dict[str, Any],
    manifest: dict[str, Any],
    active: int | None,
    started: float,
) -> int:
    """Steps 5 to 9 of the module docstring, for a bundle this host does not have applied."""
    home = opts.home
    bundle_id = int(manifest["bundle_id"])
    try:
        blobs = {
            e["sha256"]: blob_fetch(
                server=server, cache=home / "cache", entry=e, url=data["urls"][e["sha256"]], log=log
            )
            for e in manifest["entries"]
        }
        bundle_stage(home=home, manifest=manifest, blobs=blobs, log=log)
    except (SyncError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        # Nothing switched: the host keeps running what it had.
        log("apply.failed", bundle_id=bundle_id, stage="prepare", error=str(exc))
        server.heartbeat(state="failed", applied=active, instances=opts.instances, error=str(exc))
        shutil.rmtree(home / "bundles" / f"{bundle_id}.staging", ignore_errors=True)
        return 1
    previous = current_target(home)
    # What the previous bundle gave the instances, for the rollback's own health gate.
    before = classes_before(opts.instances, data["node_classes"])
    try:
        drain(opts.instances, timeout=opts.drain_timeout, log=log)
        switch(home, bundle_id)
        log("switch.done", bundle_id=bundle_id, previous=previous)
        restart(opts.restart_command, log)
        health_gate(opts.instances, data["node_classes"], timeout=opts.health_timeout, log=log)
    except (SyncError, OSError, subprocess.TimeoutExpired) as exc:
        return _roll_back(server, opts, log, bundle_id=bundle_id, previous=previous, error=str(exc), gate=before)
    if active is not None and active != bundle_id:
        _write_id(home / ".previous_bundle_id", active)
    (home / ".failed_bundle_id").unlink(missing_ok=True)
    _write_id(home / ".active_bundle_id", bundle_id)  # last: the bundle is applied and healthy
    seconds = round(time.monotonic() - started, 3)
    log("apply.done", bundle_id=bundle_id, seconds=seconds)
    server.heartbeat(state="ready", applied=bundle_id, instances=opts.instances, apply_seconds=seconds)
    gc(home, log=log, dry_run=False)
    return 0


def _roll_back(
    server: Server,
    opts: Options,
    log: SyncLog,
    *,
    bundle_id: int,
    previous: int | None,
    error: str,
    gate: dict[str, list[str]],
) -> int:
    """Back to the previous bundle, gated on the node classes the instances had with it."""
    log("apply.failed", bundle_id=bundle_id, stage="switch", error=error)
    _write_id(opts.home / ".failed_bundle_id", bundle_id)
    if previous is None:
        # No bundle to go back to: the empty tree, so that ComfyUI still starts.
        (opts.home / "current").unlink(missing_ok=True)
        init(opts.home)
        log("rollback.none", bundle_id=bundle_id, note="no previous bundle on this host: back to the empty tree")
    else:
        switch(opts.home, previous)
    back_to = previous if previous is not None else EMPTY
    try:
        restart(opts.restart_command, log)
        health_gate(opts.instances, gate, timeout=opts.health_timeout, log=log)
        log("rollback.done", bundle_id=back_to, failed_bundle_id=bundle_id)
    except (SyncError, subprocess.TimeoutExpired) as exc:
        log("rollback.unhealthy", bundle_id=back_to, error=str(exc))
        error += f"; after rolling back to bundle {back_to}: {exc}"
    server.heartbeat(
        state="failed", applied=_read_id(opts.home / ".active_bundle_id"), instances=opts.instances, error=error
    )
    return 1


def gc(home: Path, *, log: SyncLog, dry_run: bool) -> list[str]:
    """Delete bundle trees and cached blobs that neither the active nor the previous bundle uses."""
    keep_ids = {str(i) for i in (_read_id(home / ".active_bundle_id"), _read_id(home / ".previous_bundle_id")) if i}
    keep_ids.add(EMPTY)  # it holds no blobs
    current = current_target(home)
    if current is not None:
        keep_ids.add(str(current))
    removed: list[str] = []
    bundles = home / "bundles"
    needed: set[str] = set()
    for tree in sorted(bundles.iterdir()) if bundles.exists() else []:
        if tree.name == EMPTY:
            continue
        if tree.name in keep_ids and (tree / ".manifest.json").exists():
            needed |= {e["sha256"] for e in json.loads((tree / ".manifest.json").read_text())["entries"]}
            continue
        removed.append(str(tree.relative_to(home)))
        if not dry_run:
            shutil.rmtree(tree)
    cache = home / "cache"
    for blob in sorted(cache.iterdir()) if cache.exists() else []:
        # A partial download is kept: the next apply resumes it.
        if blob.name in needed or blob.name.endswith(".part"):
            continue
        removed.append(str(blob.relative_to(home)))
        if not dry_run:
            blob.unlink()
    log("gc.done", removed=removed, kept=sorted(keep_ids), dry_run=dry_run)
    return removed


def status(home: Path) -> dict[str, Any]:
    active = _read_id(home / ".active_bundle_id")
    return {
        "active_bundle_id": active,
        "previous_bundle_id": _read_id(home / ".previous_bundle_id"),
        "current": current_target(home),
        "intact": tree_intact(home / "bundles" / str(active)) if active else None,
    }


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.assetsync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=_env("BOOKRENDER_ASSETS_HOME", "/var/lib/bookrender-assets"))
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("apply", help="apply the fleet's active bundle")
    run.add_argument("--server", default=_env("BOOKRENDER_SERVER_URL", "http://127.0.0.1:8000"))
    run.add_argument("--fleet", default=_env("BOOKRENDER_FLEET", "gpu-default"))
    run.add_argument(
        "--secret-file",
        default=_env("BOOKRENDER_FLEET_SECRET_FILE", "/etc/bookrender/fleet-secret"),
        help="a file holding the fleet secret (never on the command line)",
    )
    run.add_argument("--host-name", default=_env("BOOKRENDER_HOST_NAME", socket.gethostname()))
    run.add_argument(
        "--instances",
        default=_env("BOOKRENDER_HOST_INSTANCES", "http://127.0.0.1:8188"),
        help="this host's ComfyUI base URLs, comma-separated",
    )
    run.add_argument("--restart-command", default=_env("BOOKRENDER_RESTART_COMMAND", ""))
    run.add_argument("--drain-timeout", type=float, default=float(_env("BOOKRENDER_DRAIN_TIMEOUT_SEC", "600")))
    run.add_argument("--health-timeout", type=float, default=float(_env("BOOKRENDER_HEALTH_GATE_SEC", "300")))
    run.add_argument(
        "--heartbeat-every",
        type=float,
        default=float(_env("BOOKRENDER_HEARTBEAT_SEC", str(HEARTBEAT_EVERY_SEC))),
        help="while applying, repeat the host's report this often (seconds)",
    )
    run.add_argument("--dry-run", action="store_true", help="say what would be downloaded and changed; change nothing")
    run.add_argument("--retry-failed", action="store_true", help="try again a bundle that failed its switch here")
    commands.add_parser(
        "init", help="point current at an empty tree if it points nowhere (before ComfyUI first starts)"
    )
    commands.add_parser("status", help="the applied, previous and current bundle and whether the tree is intact")
    collect = commands.add_parser("gc", help="delete trees and blobs of bundles other than the current and previous")
    collect.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    home = Path(args.home)
    if args.command == "init":
        home.mkdir(parents=True, exist_ok=True)
        made = init(home)
        out(f"{home / 'current'} -> bundles/{EMPTY}" if made else f"{home / 'current'} exists; nothing to do")
        return 0
    if args.command == "status":
        out(json.dumps(status(home), sort_keys=True))
        return 0
    if args.command == "gc":
        gc(home, log=SyncLog(home / LOG_NAME), dry_run=args.dry_run)
        return 0
    secret = Path(args.secret_file).read_text().strip()
    server = Server(url=args.server.rstrip("/"), fleet=args.fleet, secret=secret, host=args.host_name)
    opts = Options(
        home=home,
        instances=[u.strip().rstrip("/") for u in args.instances.split(",") if u.strip()],
        restart_command=args.restart_command,
        drain_timeout=args.drain_timeout,
        health_timeout=args.health_timeout,
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
        heartbeat_every=args.heartbeat_every,
    )
    home.mkdir(parents=True, exist_ok=True)
    try:
        return apply(server, opts)
    except (SyncError, requests.RequestException) as exc:
        SyncLog(home / LOG_NAME)("apply.failed", stage="server", error=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
