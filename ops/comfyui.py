"""Install, switch and clean up ComfyUI: ``python -m ops.comfyui install|update|switch|cleanup|status``.

An install home (``BOOKRENDER_COMFYUI_HOME``) holds::

    installs/<ref>-<key>/      one install: ComfyUI/ (a checkout, custom nodes in ComfyUI/custom_nodes),
                               venv/, constraints.txt, extra_model_paths.yaml, launch, install.json
    current -> installs/...    what the instances run (comfyui@N runs current/launch N)
    install.json               the home's record: current and previous install (the health server
                               reads it: no record, or a record whose main.py is gone, is not_installed)
    models/                    the shared model storage, unless --models-dir names another

``<key>`` is a hash of the resolved commit and every declared package, constraint and custom node, so
the same declaration installs once and a second ``install`` is a no-op (the test suite's cache relies
on it). An install is built in ``installs/.building-*`` and renamed when complete, so a half-finished
one never looks installed. Every failure names its step and exits 1.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE_FILE = REPO / "ops" / "comfyui-source.toml"
DEFAULT_HOME = "/opt/comfyui"
# download.pytorch.org serves the CPU-only wheels; the CUDA ones come from the normal package index.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# The model kinds ComfyUI looks up; each becomes <models>/<kind> in extra_model_paths.yaml.
MODEL_KINDS = (
    "checkpoints",
    "clip",
    "clip_vision",
    "configs",
    "controlnet",
    "diffusion_models",
    "embeddings",
    "loras",
    "text_encoders",
    "upscale_models",
    "vae",
)
# A cold ComfyUI 0.3.64 on CPU answers /system_stats after 10-40 s; a GPU host loading custom
# nodes can take minutes. Generous, because a false "did not start" would roll back a good update.
START_TIMEOUT_SEC = 300.0
RECORD = "install.json"


class InstallError(Exception):
    """A failed step: the message says which one and why."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


@dataclass(frozen=True)
class CustomNode:
    name: str
    git_url: str = ""
    commit: str = ""
    url: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Source:
    git_url: str
    ref: str
    torch: str
    torch_packages: tuple[str, ...]
    extra_packages: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    custom_nodes: tuple[CustomNode, ...] = ()


def source_load(path: Path, *, git_url: str = "", ref: str = "", torch: str = "") -> Source:
    """The declared source from a TOML file, with command-line overrides; SourceError names the field."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InstallError("source", f"cannot read {path}: {exc}") from None
    comfy = data.get("comfyui")
    if not isinstance(comfy, dict):
        raise InstallError("source", f"{path} has no [comfyui] table")

    def strings(key: str) -> tuple[str, ...]:
        value = comfy.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InstallError("source", f"{path}: comfyui.{key} must be a list of strings")
        return tuple(value)

    nodes = []
    for number, node in enumerate(data.get("custom_nodes", []), start=1):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise InstallError("source", f"{path}: custom node {number} needs a name")
        custom = CustomNode(**{k: str(node.get(k, "")) for k in ("name", "git_url", "commit", "url", "sha256")})
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", custom.name):
            raise InstallError("source", f"{path}: custom node name {custom.name!r} is not a plain folder name")
        pinned_git = custom.git_url and re.fullmatch(r"[0-9a-f]{40}", custom.commit)
        pinned_archive = custom.url and re.fullmatch(r"[0-9a-f]{64}", custom.sha256)
        if not (pinned_git or pinned_archive):
            raise InstallError(
                "source",
                f"{path}: custom node {custom.name!r} needs git_url and a 40-hex commit, or url and a sha256",
            )
        nodes.append(custom)
    source = Source(
        git_url=git_url or str(comfy.get("git_url", "")),
        ref=ref or str(comfy.get("ref", "")),
        torch=torch or str(comfy.get("torch", "cuda")),
        torch_packages=strings("torch_packages"),
        extra_packages=strings("extra_packages"),
        constraints=strings("constraints"),
        custom_nodes=tuple(nodes),
    )
    if not source.git_url or not source.ref:
        raise InstallError("source", f"{path}: comfyui.git_url and comfyui.ref are required")
    if source.torch not in ("cpu", "cuda"):
        raise InstallError("source", f"torch variant {source.torch!r}: expected cpu or cuda")
    if not any(p.split("==")[0].strip() == "torch" and "==" in p for p in source.torch_packages):
        raise InstallError("source", f"{path}: comfyui.torch_packages must pin torch (torch==<version>)")
    return source


def install_key(source: Source, commit: str) -> str:
    """What makes two installs the same: the commit (and so its requirements.txt) and every declared pin."""
    declared = asdict(source) | {"commit": commit, "ref": None, "git_url": None}
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()[:12]


def install_name(source: Source, commit: str) -> str:
    ref = re.sub(r"[^A-Za-z0-9_.-]", "_", source.ref)[:40]
    return f"{ref}-{install_key(source, commit)}"


def workflow_node_classes() -> set[str]:
    """Every node class the registered workflows use (workflows.services.graphs_in_use)."""
    from workflows.services import graphs_in_use

    return {str(node["class_type"]) for _label, graph in graphs_in_use() for node in graph.values()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Home:
    path: Path

    @property
    def installs(self) -> Path:
        return self.path / "installs"

    @property
    def current_link(self) -> Path:
        return self.path / "current"

    def record(self) -> dict[str, Any] | None:
        return read_record(self.path / RECORD)

    def install_record(self, name: str) -> dict[str, Any] | None:
        return read_record(self.installs / name / RECORD)

    def write_record(self, current: str, previous: str | None) -> None:
        install = self.install_record(current)
        assert install is not None
        record = install | {
            "current": current,
            "previous": previous,
            "switched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_json(self.path / RECORD, record)
        # Swap the link in one rename, so a unit starting now sees the old install or the new one.
        tmp = self.path / ".current.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("installs") / current)
        os.replace(tmp, self.current_link)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass
class Installer:
    home: Home
    source: Source
    models_dir: Path
    cpu: bool = False
    dry_run: bool = False
    out: TextIO = sys.stdout
    log: Path | None = None
    required_classes: set[str] = field(default_factory=set)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.say(f"[{name}] {what}")
        started = time.monotonic()
        try:
            yield
        except InstallError:
            raise
        except Exception as exc:  # any surprise still fails this step, by name
            raise InstallError(name, f"{type(exc).__name__}: {exc}") from exc
        if not self.dry_run:
            self.say(f"[{name}] ok ({time.monotonic() - started:.1f} s)")

    def run(self, step: str, command: Sequence[str | Path], *, cwd: Path | None = None) -> str:
        text = shlex.join(str(c) for c in command)
        if self.dry_run:
            self.say(f"  would run: {text}")
            return ""
        self.say(f"  $ {text}")
        result = subprocess.run(
            [str(c) for c in command], cwd=cwd, capture_output=True, text=True, env=_child_env(), check=False
        )
        if self.log is not None:
            with self.log.open("a") as log:
                log.write(f"$ {text}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise InstallError(step, f"`{text}` exited {result.returncode}:\n{tail}")
        return result.stdout

    # --- the steps -----------------------------------------------------------------------------

    def resolve(self) -> str:
        """The commit the ref names (a full commit id is taken as it is)."""
        with self.step("resolve", f"find {self.source.ref} in {self.source.git_url}"):
            if re.fullmatch(r"[0-9a-f]{40}", self.source.ref):
                return self.source.ref
            result = subprocess.run(
                ["git", "ls-remote", self.source.git_url, self.source.ref, f"{self.source.ref}^{{}}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise InstallError("resolve", f"git ls-remote {self.source.git_url}: {result.stderr.strip()}")
            refs: dict[str, str] = {}
            for line in result.stdout.splitlines():
                commit, _, name = line.partition("\t")
                refs[name] = commit
            # An annotated tag's own id is not a commit; its peeled entry (^{}) is.
            for name in (f"refs/tags/{self.source.ref}^{{}}", f"refs/tags/{self.source.ref}"):
                if name in refs:
                    return refs[name]
            for name, commit in refs.items():
                if name.endswith("/" + self.source.ref):
                    return commit
            raise InstallError("resolve", f"no ref {self.source.ref!r} in {self.source.git_url}")

    def install(self) -> str:
        """Install the source beside any others; the name of the (new or existing) install."""
        commit = self.resolve()
        name = install_name(self.source, commit)
        final = self.home.installs / name
        self.say(f"install {name}: {self.source.git_url} {self.source.ref} ({commit[:12]}), torch {self.source.torch}")
        if self.home.install_record(name) is not None:
            self.say(f"already installed: {final}")
            return name
        if self.dry_run:
            self._build(final, final, commit)
            return name
        self.home.installs.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=self.home.installs))
        self.log = building / "install.log"
        started = time.monotonic()
        try:
            self._build(building, final, commit)
            record = self._record(name, building, final, commit, started)
            write_json(building / RECORD, record)
            # The launcher and the record name the final folder, so rename before anything runs it.
            building.rename(final)
        except BaseException:
            self.say(f"install log kept in {building}/install.log")
            raise
        self.log = final / "install.log"
        self.say(f"installed {final} in {time.monotonic() - started:.0f} s")
        return name

    def _build(self, folder: Path, final: Path, commit: str) -> None:
        """Build the install in ``folder``; the files that name paths name ``final``, where it will live."""
        src, venv = folder / "ComfyUI", folder / "venv"
        python = venv / "bin" / "python"
        constraints = folder / "constraints.txt"
        with self.step("clone", f"check out {commit[:12]} into {src}"):
            self.run("clone", ["git", "clone", "--quiet", "--no-checkout", self.source.git_url, src])
            self.run("clone", ["git", "-C", src, "checkout", "--quiet", "--detach", commit])
        with self.step("venv", f"create {venv}"):
            self.run("venv", [sys.executable, "-m", "venv", venv])
        with self.step("torch", f"install {' '.join(self.source.torch_packages)} ({self.source.torch})"):
            if not self.dry_run:
                constraints.write_text("\n".join([*self.source.torch_packages, *self.source.constraints]) + "\n")
            index = ["--index-url", CPU_TORCH_INDEX] if self.source.torch == "cpu" else []
            self.run("torch", [python, "-m", "pip", "install", *index, "-c", constraints, *self.source.torch_packages])
        with self.step("requirements", "install requirements.txt and the declared extra packages"):
            pip: list[str | Path] = [python, "-m", "pip", "install", "-c", constraints]
            self.run("requirements", [*pip, "-r", src / "requirements.txt"])
            if self.source.extra_packages:
                self.run("requirements", [*pip, *self.source.extra_packages])
        for node in self.source.custom_nodes:
            self._custom_node(node, src, python, constraints)
        with self.step("torch-check", "check that torch is still the pinned build"):
            wanted = next(p.split("==")[1].strip() for p in self.source.torch_packages if p.startswith("torch=="))
            found = self.run("torch-check", [python, "-c", "import torch; print(torch.__version__)"]).strip()
            if not self.dry_run and found.split("+")[0] != wanted.split("+")[0]:
                raise InstallError("torch-check", f"torch is {found}, the source pins {wanted}")
        with self.step("model-paths", f"write extra_model_paths.yaml for {self.models_dir}"):
            if not self.dry_run:
                (folder / "extra_model_paths.yaml").write_text(model_paths_yaml(self.models_dir))
                for kind in MODEL_KINDS:
                    (self.models_dir / kind).mkdir(parents=True, exist_ok=True)
        with self.step("launcher", "write the instance launcher"):
            if not self.dry_run:
                launcher = folder / "launch"
                final_python = final / "venv" / "bin" / "python"
                launcher.write_text(launcher_script(final / "ComfyUI", final_python, final, has_database_url(src)))
                launcher.chmod(0o755)
        with self.step("validate", "start it, read /system_stats and /object_info"):
            if self.dry_run:
                self.say(f"  would start {src / 'main.py'} and check {len(self.required_classes)} node classes")
            else:
                validate_install(python, src, folder, self.required_classes, cpu=self.cpu, out=self.out)

    def _custom_node(self, node: CustomNode, src: Path, python: Path, constraints: Path) -> None:
        target = src / "custom_nodes" / node.name
        pin = node.commit[:12] if node.git_url else f"sha256 {node.sha256[:12]}"
        step = f"custom-node {node.name}"
        with self.step(step, f"{node.git_url or node.url} at {pin}"):
            if node.git_url:
                self.run(step, ["git", "clone", "--quiet", "--no-checkout", node.git_url, target])
                self.run(step, ["git", "-C", target, "checkout", "--quiet", "--detach", node.commit])
            elif self.dry_run:
                self.say(f"  would download {node.url}, check its sha256, unpack into {target}")
            else:
                fetch_archive(node, target)
            requirements = target / "requirements.txt"
            if self.dry_run or requirements.is_file():
                self.run(
                    f"custom-node {node.name}",
                    [python, "-m", "pip", "install", "-c", constraints, "-r", requirements],
                )

    def _record(self, name: str, building: Path, final: Path, commit: str, started: float) -> dict[str, Any]:
        python = building / "venv" / "bin" / "python"
        torch_version = self.run("record", [python, "-c", "import torch; print(torch.__version__)"]).strip()
        return {
            "name": name,
            "git_url": self.source.git_url,
            "ref": self.source.ref,
            "commit": commit,
            "torch": self.source.torch,
            "torch_version": torch_version,
            "torch_packages": list(self.source.torch_packages),
            "extra_packages": list(self.source.extra_packages),
            "constraints": list(self.source.constraints),
            "custom_nodes": [asdict(node) for node in self.source.custom_nodes],
            "comfyui_dir": str(final / "ComfyUI"),
            "python": str(final / "venv" / "bin" / "python"),
            "launcher": str(final / "launch"),
            "models_dir": str(self.models_dir),
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "install_seconds": round(time.monotonic() - started, 1),
        }


def _child_env() -> dict[str, str]:
    # pip must not install into bookrender's own environment by inheriting its VIRTUAL_ENV.
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}


def fetch_archive(node: CustomNode, target: Path) -> None:
    step = f"custom-node {node.name}"
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        urllib.request.urlretrieve(node.url, archive)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != node.sha256:
            raise InstallError(step, f"{node.url} has sha256 {digest}, the source declares {node.sha256}")
        unpacked = Path(tmp) / "unpacked"
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(unpacked)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        # GitHub archives hold one top folder (<repo>-<commit>/); use what is inside it.
        entries = list(unpacked.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        shutil.move(str(root), target)


def has_database_url(src: Path) -> bool:
    """Whether this release takes --database-url (then each instance gets its own database)."""
    cli_args = src / "comfy" / "cli_args.py"
    return cli_args.is_file() and "--database-url" in cli_args.read_text()


def model_paths_yaml(models_dir: Path) -> str:
    lines = [
        "# Written by bookrender's installer (python -m ops.comfyui): the shared model storage.",
        "bookrender:",
        f"  base_path: {json.dumps(str(models_dir))}",
        "  is_default: true",
    ]
    lines += [f"  {kind}: {kind}/" for kind in MODEL_KINDS]
    return "\n".join(lines) + "\n"


def launcher_script(src: Path, python: Path, folder: Path, database_url: bool) -> str:
    database = ' --database-url "sqlite:///$data/user/$n/comfyui.db"' if database_url else ""
    return f"""#!/bin/sh
# Starts ComfyUI instance N of this install; written by bookrender's installer (python -m ops.comfyui).
# Instance N serves GPU N on port CUI_PORT_BASE + N (8188 + N) with its own temp, input, output and
# user folders (and database) under CUI_DATA_DIR; the models and custom nodes are shared.
# Usage: launch <N> [more ComfyUI arguments, e.g. --cpu]
set -eu
case "${{1:-}}" in ''|*[!0-9]*) echo "usage: $0 <gpu index> [comfyui arguments]" >&2; exit 2;; esac
n=$1
shift
data=${{CUI_DATA_DIR:-/var/lib/comfyui}}
mkdir -p "$data/temp/$n" "$data/input/$n" "$data/output/$n" "$data/user/$n"
exec {shlex.quote(str(python))} {shlex.quote(str(src / "main.py"))} \\
  --listen "${{CUI_LISTEN:-127.0.0.1}}" --port "$((${{CUI_PORT_BASE:-8188}} + n))" --cuda-device "$n" \\
  --temp-directory "$data/temp/$n" --input-directory "$data/input/$n" \\
  --output-directory "$data/output/$n" --user-directory "$data/user/$n"{database} \\
  --extra-model-paths-config {shlex.quote(str(folder / "extra_model_paths.yaml"))} \\
  --disable-auto-launch "$@"
"""


def wait_until_serving(url: str, process: subprocess.Popen[bytes] | None, *, timeout: float) -> str:
    """Wait until ComfyUI at ``url`` answers /system_stats; the error text, or "" when it does."""
    from renders.comfy import ComfyClient, ComfyError

    client = ComfyClient(url, timeout=5.0)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return f"ComfyUI exited with status {process.returncode} before answering /system_stats"
        try:
            client.system_stats()
            return ""
        except ComfyError as exc:
            last = str(exc)
        time.sleep(0.5)
    return f"no answer from /system_stats within {timeout:.0f} s ({last})"


def check_node_classes(url: str, required: set[str]) -> str:
    """The error text when /object_info lacks a required class, or ""."""
    from renders.comfy import ComfyClient

    classes = ComfyClient(url, timeout=60.0).node_classes()
    missing = sorted(required - classes)
    if missing:
        return f"/object_info lacks {', '.join(missing)} (used by the configured workflows)"
    return ""


def validate_install(python: Path, src: Path, folder: Path, required: set[str], *, cpu: bool, out: TextIO) -> None:
    """Start the install on a free port with throw-away folders, check it, stop it."""
    with tempfile.TemporaryDirectory(prefix="comfyui-validate-") as data:
        port = free_port()
        command = [
            str(python),
            str(src / "main.py"),
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--temp-directory",
            data,
            "--input-directory",
            data,
            "--output-directory",
            data,
            "--extra-model-paths-config",
            str(folder / "extra_model_paths.yaml"),
            "--disable-auto-launch",
        ]
        if has_database_url(src):
            command += ["--database-url", f"sqlite:///{data}/comfyui.db"]
        if cpu:
            command.append("--cpu")
        log_path = Path(data) / "comfyui.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
            try:
                url = f"http://127.0.0.1:{port}"
                problem = wait_until_serving(url, process, timeout=START_TIMEOUT_SEC) or check_node_classes(
                    url, required
                )
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if problem:
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-15:])
            raise InstallError("validate", f"{problem}\nComfyUI's log ends:\n{tail}")
        print(f"  answered /system_stats and /object_info on port {port}", file=out)


# --- switching the instances --------------------------------------------------------------------


@dataclass
class Switcher:
    home: Home
    instances: list[int]
    restart_command: str
    port_base: int = 8188
    drain_timeout: float = 600.0
    required_classes: set[str] = field(default_factory=set)
    dry_run: bool = False
    out: TextIO = sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def switch(self, name: str) -> None:
        """1. drain the instances; 2. point current at ``name``; 3. restart them; 4. validate them.
        If 3 or 4 fails, point current back at the install it replaced, restart again, and fail."""
        if self.home.install_record(name) is None and not self.dry_run:
            raise InstallError("switch", f"no complete install {name} in {self.home.installs}")
        record = self.home.record() or {}
        old = str(record["current"]) if record.get("current") else None
        old_previous = str(record["previous"]) if record.get("previous") else None
        if old == name:
            self.say(f"[switch] {name} is already current")
            return
        self.say(f"[switch] {old or '(none)'} -> {name}, instances {self.instances or '(none)'}")
        if self.dry_run:
            self.say(f"  would drain, point {self.home.current_link} at installs/{name}, run")
            for index in self.instances:
                self.say(f"    {self.restart_command.format(index=index)}")
            self.say("  and validate each instance; on failure switch back")
            return
        self.drain()
        self.home.write_record(name, old)
        problem = self.restart_and_validate()
        if not problem:
            self.say(f"[switch] ok: {name} is current, {old or 'nothing'} kept as previous")
            return
        if old is None:
            raise InstallError("validate", problem)
        self.say(f"[validate] failed: {problem}")
        self.say(f"[rollback] switching back to {old}")
        self.home.write_record(old, old_previous)
        again = self.restart_and_validate()
        if again:
            raise InstallError("rollback", f"switched back to {old}, but it does not validate either: {again}")
        raise InstallError("validate", f"{problem}; rolled back to {old}, which validates")

    def drain(self) -> None:
        from renders.comfy import ComfyClient, ComfyError

        for index in self.instances:
            client = ComfyClient(self.url(index), timeout=5.0)
            self.say(f"[drain] waiting for {client.base_url}'s queue to empty")
            deadline = time.monotonic() + self.drain_timeout
            while True:
                try:
                    if client.queue_remaining() == 0:
                        break
                except ComfyError:
                    break  # not running: nothing to drain
                if time.monotonic() > deadline:
                    raise InstallError("drain", f"{client.base_url} still busy after {self.drain_timeout:.0f} s")
                time.sleep(1.0)

    def restart_and_validate(self) -> str:
        for index in self.instances:
            command = self.restart_command.format(index=index)
            self.say(f"[restart] {command}")
            result = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                return f"`{command}` exited {result.returncode}: {result.stderr.strip()[-500:]}"
        for index in self.instances:
            url = self.url(index)
            self.say(f"[validate] {url}")
            problem = wait_until_serving(url, None, timeout=START_TIMEOUT_SEC) or check_node_classes(
                url, self.required_classes
            )
            if problem:
                return f"{url}: {problem}"
        return ""

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.port_base + index}"


def cleanup(home: Home, *, dry_run: bool, out: TextIO) -> list[Path]:
    """Remove every install but the current and the previous one (and failed builds)."""
    record = home.record() or {}
    keep = {record.get("current"), record.get("previous")}
    removed = []
    for folder in sorted(home.installs.iterdir()) if home.installs.is_dir() else []:
        if folder.name in keep:
            continue
        print(f"[cleanup] {'would remove' if dry_run else 'remove'} {folder}", file=out)
        if not dry_run:
            shutil.rmtree(folder)
        removed.append(folder)
    return removed


def dev_instance(*, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run the current install as instance 0 on CPU (make run)."""
    from django.conf import settings

    home = Home(Path(settings.BOOKRENDER_COMFYUI_HOME or DEFAULT_HOME))
    record = home.record()
    if record is None:
        raise SystemExit(
            f"BOOKRENDER_DEV_COMFYUI=installed, but no ComfyUI is installed in {home.path}: "
            "run python -m ops.comfyui install --cpu (and set BOOKRENDER_COMFYUI_HOME)"
        )
    return [str(record["launcher"]), "0", "--cpu"], {"CUI_PORT_BASE": str(port), "CUI_DATA_DIR": str(data_dir)}


# --- command line -------------------------------------------------------------------------------


def _lock(home: Home, out: TextIO) -> TextIO:
    """One installer at a time per home: clean-up must never delete another one's build."""
    home.path.mkdir(parents=True, exist_ok=True)
    lock = (home.path / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for another python -m ops.comfyui working in {home.path}", file=out, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _indexes(text: str) -> list[int]:
    if not all(part.isdigit() for part in text.split()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected GPU indexes separated by spaces, e.g. '0 1'")
    return [int(part) for part in text.split()]


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    parser = argparse.ArgumentParser(prog="python -m ops.comfyui", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=settings.BOOKRENDER_COMFYUI_HOME or DEFAULT_HOME)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "update"):
        sub = commands.add_parser(name, help=f"{name} ComfyUI from the declared source")
        sub.add_argument("--source", type=Path, default=DEFAULT_SOURCE_FILE, help="the TOML declaration")
        sub.add_argument("--git-url", default="")
        sub.add_argument("--ref", default="")
        sub.add_argument("--torch", choices=("cpu", "cuda"), default="")
        sub.add_argument(
            "--models-dir",
            default=os.environ.get("CUI_MODELS_DIR", ""),
            help="the shared model storage (default: $CUI_MODELS_DIR, else <home>/models)",
        )
        sub.add_argument("--cpu", action="store_true", help="validate with --cpu (a machine without a GPU)")
        sub.add_argument("--dry-run", action="store_true")
    switch = commands.add_parser("switch", help="switch the instances to an installed install")
    switch.add_argument("name")
    switch.add_argument("--dry-run", action="store_true")
    for sub in (commands.choices["update"], switch):
        sub.add_argument(
            "--instances",
            type=_indexes,
            default=os.environ.get("CUI_GPUS", ""),
            help='the GPU indexes whose instances switch, e.g. "0 1" (default: $CUI_GPUS)',
        )
        sub.add_argument("--restart-command", default="systemctl restart comfyui@{index}")
        sub.add_argument("--port-base", type=int, default=int(os.environ.get("CUI_PORT_BASE", "8188")))
    clean = commands.add_parser("cleanup", help="remove installs other than the current and previous")
    clean.add_argument("--dry-run", action="store_true")
    commands.add_parser("status", help="print the home's record")
    args = parser.parse_args(argv)
    home = Home(Path(args.home).resolve())
    if args.command != "status" and not getattr(args, "dry_run", False):
        lock = _lock(home, out)  # noqa: F841 (held until the process exits)
    try:
        if args.command == "status":
            record = home.record()
            print(json.dumps(record, indent=2) if record else f"not installed: no {home.path / RECORD}", file=out)
            return 0 if record else 1
        if args.command == "cleanup":
            cleanup(home, dry_run=args.dry_run, out=out)
            return 0
        required = workflow_node_classes()
        if args.command in ("install", "update"):
            source = source_load(args.source, git_url=args.git_url, ref=args.ref, torch=args.torch)
            models = Path(args.models_dir or home.path / "models").resolve()
            installer = Installer(home, source, models, cpu=args.cpu, dry_run=args.dry_run, out=out)
            installer.required_classes = required
            name = installer.install()
            if args.command == "install":
                if home.record() is None and not args.dry_run:
                    home.write_record(name, None)
                    print(f"current: {name}", file=out)
                return 0
        else:
            name = args.name
        switcher = Switcher(
            home,
            instances=args.instances,
            restart_command=args.restart_command,
            port_base=args.port_base,
            required_classes=required,
            dry_run=args.dry_run,
            out=out,
        )
        switcher.switch(name)
        if not args.dry_run:
            cleanup(home, dry_run=False, out=out)
        return 0
    except InstallError as exc:
        print(f"FAILED at step {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
