"""The env files ops/install.sh ships: bookrender's uses only variables bookrender reads (an
unknown one stops start-up), and /etc/default/comfyui uses none of bookrender's prefixes."""

from __future__ import annotations

import re
from pathlib import Path

from config import env
from ops.health.thresholds import alert_webhook_url, repair_policy_from_env, thresholds_from_env
from ops.repair.drift import env_file_read

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = re.compile(r"^#?([A-Z][A-Z0-9_]+)=", re.M)


def test_every_variable_in_bookrenders_env_file_is_one_it_reads():
    thresholds_from_env(), repair_policy_from_env(), alert_webhook_url()
    names = ASSIGNMENT.findall((ROOT / "ops/default/bookrender.env").read_text())
    # gunicorn and Flower read their own variables.
    unknown = [
        name for name in names if name not in env.KNOWN and name not in ("GUNICORN_CMD_ARGS", "FLOWER_BASIC_AUTH")
    ]
    assert names and unknown == []


def test_comfyuis_env_file_stays_out_of_bookrenders_prefixes_and_documents_each_variable():
    text = (ROOT / "ops/default/comfyui").read_text()
    names = ASSIGNMENT.findall(text)
    assert names and all(name.startswith("CUI_") for name in names)
    assert not any(name.startswith(env.OWN_PREFIXES) for name in names)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if ASSIGNMENT.match(line):
            assert lines[index - 1].startswith("#"), f"{line} has no comment above it"


def test_every_comfyui_variable_is_used_by_a_unit_or_the_ops_code():
    used = "".join(p.read_text() for p in (ROOT / "ops").rglob("*") if p.suffix in (".service", ".py", ".sh"))
    for name in env_file_read(ROOT / "ops/default/comfyui"):
        assert name in used, name


def test_every_variable_in_the_asset_sync_env_file_is_one_the_asset_sync_reads():
    text = (ROOT / "ops/default/comfyui-asset-sync").read_text()
    names = ASSIGNMENT.findall(text)
    read = set(re.findall(r'_env\("([A-Z_]+)"', (ROOT / "ops/assetsync.py").read_text()))
    assert names and [name for name in names if name not in read] == []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if ASSIGNMENT.match(line):
            assert lines[index - 1].startswith("#"), f"{line} has no comment above it"
