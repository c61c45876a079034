"""ops/install.sh and its rollback, ops/uninstall.sh: a dry run prints every action and changes
nothing; a real run (into a scratch root) places every file, and the rollback removes them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_UNITS = sorted(
    p.name for p in (ROOT / "ops/services").iterdir() if p.suffix in (".service", ".timer", ".target")
)


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "ops" / script), *args], capture_output=True, text=True, timeout=60)


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mode and, for links, target; for files, content."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        detail = os.readlink(path) if path.is_symlink() else (path.read_text() if path.is_file() else "")
        found[str(path.relative_to(root))] = (info.st_mode, detail)
    return found


def test_a_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc").mkdir(parents=True)
    before = tree(stage)

    result = run("install.sh", "--dry-run", "--root", str(stage))

    assert result.returncode == 0, result.stderr
    assert tree(stage) == before
    out = result.stdout
    for unit in SHIPPED_UNITS:
        assert f"would run: install -m 0644 {ROOT}/ops/services/{unit} {stage}/etc/systemd/system/{unit}" in out
    assert f"would run: install -m 0640 {ROOT}/ops/default/bookrender.env {stage}/etc/bookrender/bookrender.env" in out
    assert f"would run: install -m 0644 {ROOT}/ops/default/comfyui {stage}/etc/default/comfyui" in out
    sync_env = f"{ROOT}/ops/default/comfyui-asset-sync {stage}/etc/default/comfyui-asset-sync"
    assert f"would run: install -m 0644 {sync_env}" in out
    assert f"{stage}/etc/bookrender/logrotate/comfyui" in out
    assert "50-bookrender-repair.rules" in out
    assert out.rstrip().endswith("done (dry run: nothing was changed)")


def test_a_dry_run_on_the_real_root_lists_users_and_systemctl():
    unit = Path("/etc/systemd/system/bookrender-web.service")
    existed = unit.exists()

    result = run("install.sh", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert unit.exists() == existed
    for user in ("bookrender", "comfyui"):
        assert f"--shell /usr/sbin/nologin {user}" in result.stdout or f"user {user} exists" in result.stdout
    assert "would run: systemctl daemon-reload" in result.stdout
    enable = next(line for line in result.stdout.splitlines() if "systemctl enable --now" in line)
    for name in (
        "bookrender.target",
        "comfyui@0.service",
        "bookrender-worker@0.service",
        "bookrender-maintenance.service",
        "comfyui-monitor.timer",
    ):
        assert name in enable
    # This machine holds no fleet secret: it is not in a fleet, so its asset sync stays off.
    assert not Path("/etc/bookrender/fleet-secret").exists()
    assert "comfyui-asset-sync.timer" not in enable
    assert "not in a fleet, comfyui-asset-sync.timer not enabled" in result.stdout


def test_install_then_uninstall_leaves_the_root_as_it_was(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc/systemd/system").mkdir(parents=True)
    before = tree(stage)

    installed = run("install.sh", "--root", str(stage), "--no-start")

    assert installed.returncode == 0, installed.stderr
    for unit in SHIPPED_UNITS:
        assert (stage / "etc/systemd/system" / unit).read_bytes() == (ROOT / "ops/services" / unit).read_bytes()
    env_file = stage / "etc/bookrender/bookrender.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert (stage / "etc/default/comfyui").exists()
    assert (stage / "etc/bookrender/logrotate/comfyui").exists()
    assert (stage / "var/log/comfyui/env-setup.log").read_text().count('"event": "install"') > 10

    # The env file is configuration: a second install keeps the administrator's edits.
    env_file.write_text("DJANGO_SECRET_KEY=edited\n")
    again = run("install.sh", "--root", str(stage), "--no-start")
    assert again.returncode == 0 and env_file.read_text() == "DJANGO_SECRET_KEY=edited\n"

    removed = run("uninstall.sh", "--root", str(stage), "--purge")

    assert removed.returncode == 0, removed.stderr
    left = tree(stage)
    # Data and logs stay (a rollback never deletes them), and so do the empty folders; no file
    # install.sh added is left anywhere else.
    added = {
        path
        for path, (mode, _) in left.items()
        if path not in before and not stat.S_ISDIR(mode) and not path.startswith(("var/lib/comfyui", "var/log/comfyui"))
    }
    assert added == set()
    for unit in SHIPPED_UNITS:
        assert not (stage / "etc/systemd/system" / unit).exists()


def test_uninstall_dry_run_changes_nothing(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc/systemd/system").mkdir(parents=True)
    assert run("install.sh", "--root", str(stage), "--no-start").returncode == 0
    before = tree(stage)

    result = run("uninstall.sh", "--dry-run", "--root", str(stage), "--purge")

    assert result.returncode == 0, result.stderr
    assert tree(stage) == before
    assert f"would run: rm -f {stage}/etc/systemd/system/comfyui@.service" in result.stdout
    assert f"would run: rm -rf {stage}/etc/bookrender" in result.stdout


def test_the_comfyui_env_file_is_read_as_text_never_run(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc/default").mkdir(parents=True)
    ran = tmp_path / "ran"
    (stage / "etc/default/comfyui").write_text(
        f'CUI_GPUS="0 1"\nCUI_MODELS_DIR=/srv/models\ntouch {ran}\nDRY_RUN=1\nROOT=/\nHERE=/nowhere\nPATH=/nowhere\n'
        f'CUI_ARGS="$(touch {ran})"\n'
    )

    result = run("install.sh", "--root", str(stage))

    assert result.returncode == 0, result.stderr
    assert not ran.exists()  # nothing in the file ran
    # DRY_RUN, ROOT, HERE and PATH stayed the script's own: it installed for real, into the stage.
    assert (stage / "etc/systemd/system/bookrender-web.service").exists()
    enable = next(line for line in result.stdout.splitlines() if "systemctl enable --now" in line)
    assert "comfyui@1.service" in enable and "bookrender-worker@1.service" in enable


def test_a_malformed_gpu_list_is_refused_by_name(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc/default").mkdir(parents=True)
    (stage / "etc/default/comfyui").write_text('CUI_GPUS="0; reboot"\n')
    result = run("install.sh", "--root", str(stage), "--no-start")
    assert result.returncode == 1
    assert 'CUI_GPUS="0; reboot"' in result.stderr and "GPU indexes separated by spaces" in result.stderr


def test_every_action_is_logged_as_valid_json_even_with_odd_paths(tmp_path: Path):
    stage = tmp_path / 'st"a\\g\te'
    (stage / "etc/systemd/system").mkdir(parents=True)

    result = run("install.sh", "--root", str(stage), "--no-start")

    assert result.returncode == 0, result.stderr
    lines = (stage / "var/log/comfyui/env-setup.log").read_text().splitlines()
    actions = [json.loads(line)["run"] for line in lines]
    assert any(str(stage) in action for action in actions)
    # The kernel module list is an action like any other: run through act, so logged.
    assert f"install -m 0644 {ROOT}/ops/modules-load/comfyui.conf {stage}/etc/modules-load.d/comfyui.conf" in actions
    assert (stage / "etc/modules-load.d/comfyui.conf").read_text().splitlines()[-1] == "nvidia-uvm"


def test_a_host_holding_its_fleets_secret_gets_the_asset_sync_timer(tmp_path: Path):
    stage = tmp_path / "stage"
    (stage / "etc/bookrender").mkdir(parents=True)
    (stage / "etc/bookrender/fleet-secret").write_text("s3cret\n")

    result = run("install.sh", "--root", str(stage))

    assert result.returncode == 0, result.stderr
    enable = next(line for line in result.stdout.splitlines() if "systemctl enable --now" in line)
    assert "comfyui-asset-sync.timer" in enable
    shipped = (ROOT / "ops/default/comfyui-asset-sync").read_text()
    assert (stage / "etc/default/comfyui-asset-sync").read_text() == shipped
