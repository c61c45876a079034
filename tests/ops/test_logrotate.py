"""ops/logrotate/comfyui: daily, compressed, 14 days, files 0640; logrotate itself accepts it."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.logrotate.validate import config_parse, config_problems

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "ops" / "logrotate" / "comfyui"
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"

needs_logrotate = pytest.mark.skipif(not Path(LOGROTATE).exists(), reason="logrotate is not installed")


def config_for(folder: Path) -> Path:
    """The shipped config, pointed at a scratch folder instead of /var/log/comfyui."""
    copy = folder.parent / "comfyui.conf"
    copy.write_text(CONFIG.read_text().replace("/var/log/comfyui/", f"{folder}/"))
    return copy


@needs_logrotate
def test_logrotate_accepts_the_config_in_debug_mode(tmp_path: Path):
    result = subprocess.run(
        [LOGROTATE, "-d", "--state", str(tmp_path / "status"), str(CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()
    assert "rotating pattern: /var/log/comfyui/*.log  after 1 days (14 rotations)" in result.stderr


@needs_logrotate
def test_the_validator_accepts_the_shipped_config():
    result = subprocess.run(
        [sys.executable, "ops/logrotate/validate.py", "--dry-run", "--config", "ops/logrotate/comfyui"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_the_validator_names_what_is_wrong():
    blocks = config_parse("/var/log/comfyui/ops-maint.log {\n  weekly\n  rotate 4\n  create 0644\n}\n")
    problems = "\n".join(config_problems(blocks))
    assert "not daily" in problems
    assert "keeps 4 rotations, not 14" in problems
    assert "not compressed" in problems
    assert "create 0644 lets everyone read the logs" in problems
    assert "/var/log/comfyui/env-setup.log is not rotated" in problems


@needs_logrotate
def test_a_rotation_compresses_old_logs_and_creates_a_private_new_one(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("ops-maint.log", "models-integ.log"):
        (logs / name).write_text('{"msg": "one"}\n')
        (logs / name).chmod(0o644)
    state = tmp_path / "status"
    config = config_for(logs)
    # Two forced rotations a day apart: the first leaves a plain file (delaycompress), the second
    # compresses it.
    subprocess.run([LOGROTATE, "-f", "--state", str(state), str(config)], check=True)
    yesterday = time.time() - 86400
    for rotated in logs.glob("ops-maint.log-*"):
        rotated.rename(logs / "ops-maint.log-20000101")
        os.utime(logs / "ops-maint.log-20000101", (yesterday, yesterday))
    (logs / "ops-maint.log").write_text('{"msg": "two"}\n')
    subprocess.run([LOGROTATE, "-f", "--state", str(state), str(config)], check=True)

    with gzip.open(logs / "ops-maint.log-20000101.gz") as compressed:
        assert compressed.read() == b'{"msg": "one"}\n'
    fresh = logs / "ops-maint.log"
    assert fresh.exists() and fresh.stat().st_size == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
