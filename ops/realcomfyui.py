"""The real ComfyUI that the tests and the bench run against, installed by bookrender's own
installer (ops/comfyui.py) into one shared cache.

The source is ``BOOKRENDER_TEST_COMFYUI_SOURCE`` (a git URL, path or bundle) at
``BOOKRENDER_TEST_COMFYUI_REF``, with the torch pins of ops/comfyui-source.toml and one custom node,
the "done marker" (tests/fixtures/comfyui/done_marker), from a git repository made here. The install
lives in ``BOOKRENDER_TEST_COMFYUI_CACHE`` (outside the checkout), keyed by the resolved commit and
every pin, so only the first run pays for it, whether a test run or ``make bench`` gets there first.
tests/realcomfyui.py turns "not configured" into a skip (or a failure under
``BOOKRENDER_REQUIRE_COMFYUI``); the bench prints it and skips its real-ComfyUI part.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from ops.comfyui import START_TIMEOUT_SEC, free_port, read_record, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
DONE_MARKER = ROOT / "tests" / "fixtures" / "comfyui" / "done_marker"
DONE_MARKER_CLASS = "BookrenderDoneMarker"
NOT_CONFIGURED = "BOOKRENDER_TEST_COMFYUI_SOURCE is not set: no real ComfyUI to test against"
# Fixed author and dates make the node repository's commit id, and so the install's key, the same
# on every run and every machine: the cached install stays valid.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bookrender tests",
    "GIT_AUTHOR_EMAIL": "tests@bookrender.invalid",
    "GIT_COMMITTER_NAME": "bookrender tests",
    "GIT_COMMITTER_EMAIL": "tests@bookrender.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


class InstallFailed(Exception):
    """The installer exited non-zero; the message ends with its log's tail."""


def cache_dir() -> Path:
    return Path(settings.BOOKRENDER_TEST_COMFYUI_CACHE).expanduser().resolve()


def configured_source() -> tuple[str, str] | None:
    """(git source, ref), or None when BOOKRENDER_TEST_COMFYUI_SOURCE is not set."""
    source = settings.BOOKRENDER_TEST_COMFYUI_SOURCE
    if not source:
        return None
    # A relative path is relative to the checkout (.ci/run passes ../shared/vendor/...).
    if not source.startswith(("http://", "https://", "git@", "ssh://", "file://")):
        source = str((ROOT / source).resolve())
    return source, settings.BOOKRENDER_TEST_COMFYUI_REF


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=os.environ | _GIT_IDENTITY
    )
    return result.stdout.strip()


def done_marker_repo(cache: Path) -> tuple[Path, str]:
    """A git repository holding the done-marker node, rebuilt from the fixture; (path, commit)."""
    repo = cache / "nodes" / "done-marker"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for path in sorted(DONE_MARKER.iterdir()):
        if path.is_file():
            shutil.copy(path, repo / path.name)
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    git("add", "--all", cwd=repo)
    git("commit", "--quiet", "--no-gpg-sign", "-m", "done marker node", cwd=repo)
    return repo, git("rev-parse", "HEAD", cwd=repo)


def source_toml(cache: Path, repo: Path, commit: str) -> Path:
    """The tests' declaration: the project's pins plus the done-marker node."""
    declared: dict[str, Any] = tomllib.loads((ROOT / "ops" / "comfyui-source.toml").read_text())["comfyui"]
    lines = ["[comfyui]", 'git_url = "unused; given on the command line"', 'ref = "unused"']
    for key in ("torch", "torch_packages", "extra_packages", "constraints"):
        lines.append(f"{key} = {_toml_value(declared[key])}")
    lines += ["", "[[custom_nodes]]", 'name = "done-marker"', f"git_url = {_toml_value(str(repo))}"]
    lines.append(f'commit = "{commit}"')
    path = cache / "source.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def install(source: str, ref: str) -> dict[str, Any]:
    """Install (or find in the cache) the configured ComfyUI; its install record."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # One installer at a time per cache, whichever process or checkout gets there first.
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        repo, commit = done_marker_repo(cache)
        declaration = source_toml(cache, repo, commit)
        home = cache / "home"
        log = cache / "install.log"
        command = [sys.executable, "-m", "ops.comfyui", "--home", str(home), "install"]
        command += ["--source", str(declaration), "--git-url", source, "--ref", ref, "--cpu"]
        with log.open("w") as out:
            result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise InstallFailed(f"installing ComfyUI failed; {log}:\n{log.read_text()[-4000:]}")
        # The install this declaration names, not necessarily the home's current one.
        name = next(
            line.split()[1].rstrip(":")
            for line in log.read_text().splitlines()
            if line.startswith("install ") and ":" in line
        )
        record = read_record(home / "installs" / name / "install.json")
        if record is None:
            raise InstallFailed(f"no install record for {name}")
        return record


@dataclass
class RealComfyUI:
    """One ComfyUI instance (instance 0 of the install's launcher) on a free port, on CPU."""

    launcher: Path
    data_dir: Path
    port: int
    args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output" / "0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "comfyui.log"

    def start(self) -> None:
        env = os.environ | {"CUI_DATA_DIR": str(self.data_dir), "CUI_PORT_BASE": str(self.port)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.launcher), "0", "--cpu", *self.args], stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def wait_ready(self) -> None:
        problem = wait_until_serving(self.url, self.process, timeout=START_TIMEOUT_SEC)
        if problem:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"ComfyUI at {self.url}: {problem}\n{tail}")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running(record: dict[str, Any], data_dir: Path, args: Sequence[str] = ()) -> Iterator[RealComfyUI]:
    """Instance 0 of the installed ``record`` on a free port, stopped afterwards."""
    comfy = RealComfyUI(Path(record["launcher"]), data_dir, free_port(), args)
    comfy.start()
    try:
        comfy.wait_ready()
        yield comfy
    finally:
        comfy.stop()
