"""The operations world: a webhook that records alerts, a fake systemctl that records calls, and
ComfyUI's data folders with old and new files, a broken model link and a model storage."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops.health.logs import LOG_FILES

OLD = time.time() - 40 * 86400  # past every retention
FRESH = time.time() - 60


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The scripts replace the root logger's handlers (their stdout is a report); put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    for name in LOG_FILES:
        for handler in list(logging.getLogger(name).handlers):
            logging.getLogger(name).removeHandler(handler)
            handler.close()


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    # Status codes to answer, in order; 200 once they run out.
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(hook.delay)
            hook.received.append(json.loads(body))
            self.send_response(hook.answers.pop(0) if hook.answers else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alert"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


@dataclass
class FakeSystemctl:
    command: str
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def systemctl(tmp_path: Path) -> FakeSystemctl:
    """A systemctl that only writes down how it was called (the real one must never run here)."""
    log = tmp_path / "systemctl-calls.log"
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return FakeSystemctl(command=str(script), log=log)


def free_local_gpu_port() -> tuple[int, int]:
    """A GPU index whose ComfyUI port (8188 + index) nobody listens on: a dead local instance."""
    for index in range(63, 40, -1):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 8188 + index)) != 0:
                return index, 8188 + index
    raise RuntimeError("no free port in 8229-8251")


@dataclass
class World:
    root: Path
    data_dir: Path
    models_dir: Path
    log_dir: Path
    systemd_dir: Path
    env_file: Path
    state_file: Path

    def tree(self) -> dict[str, tuple[int, float, str]]:
        """Every path with its mode, modification time and link target or size: any change shows."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            info = path.lstat()
            detail = os.readlink(path) if path.is_symlink() else str(info.st_size)
            found[str(path.relative_to(self.root))] = (info.st_mode, info.st_mtime, detail)
        return found


def touch(path: Path, when: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (when, when))
    return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    root = tmp_path / "world"
    w = World(
        root=root,
        data_dir=root / "var/lib/comfyui",
        models_dir=root / "srv/models",
        log_dir=root / "var/log/comfyui",
        systemd_dir=root / "etc/systemd/system",
        env_file=root / "etc/bookrender/bookrender.env",
        state_file=root / "var/lib/bookrender/repair-restarts.json",
    )
    touch(w.data_dir / "temp/0/temp/preview_old.png", OLD)
    touch(w.data_dir / "temp/0/temp/preview_new.png", FRESH)
    touch(w.data_dir / "output/bookrender/book-1/page-0001_old.png", OLD)
    touch(w.data_dir / "output/bookrender/book-2/page-0001_new.png", FRESH)
    (w.models_dir / "checkpoints").mkdir(parents=True)
    (w.models_dir / "loras").mkdir()
    (w.data_dir / "models").mkdir(parents=True)
    (w.data_dir / "models/checkpoints").symlink_to(root / "old-disk/checkpoints")  # broken
    (w.data_dir / "models/loras").symlink_to(w.models_dir / "loras")
    touch(w.log_dir / "ops-maint.log", OLD)  # live, however old: logrotate's, never ours
    touch(w.log_dir / "ops-maint.log-20200101.gz", OLD)
    touch(w.log_dir / "models-integ.log-20991231", FRESH)
    w.systemd_dir.mkdir(parents=True)
    touch(w.env_file, FRESH, "DJANGO_SECRET_KEY=x\n").chmod(0o644)
    w.state_file.parent.mkdir(parents=True)
    monkeypatch.setenv("CUI_DATA_DIR", str(w.data_dir))
    monkeypatch.setenv("CUI_MODELS_DIR", str(w.models_dir))
    return w
