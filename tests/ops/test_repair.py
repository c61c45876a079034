"""ops/repair/auto-repair.py: a dry run changes nothing; a real run repairs what the checks found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from books.models import Book, BookPage
from ops.health.checks import context_from_environment
from ops.repair.actions import Action, Repair, unit_restart
from ops.repair.cli import main
from ops.repair.drift import SystemPaths
from tests.conftest import builtin_style, service_env
from tests.ops.conftest import FakeSystemctl, Webhook, World, free_local_gpu_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broken(world: World, simulator, alice, broker, monkeypatch) -> dict[str, Any]:
    """Everything at once: a dead local ComfyUI, an instance short of VRAM, no worker for the GPU,
    two stuck pages, old files, a broken model link, and a world-readable env file."""
    index, port = free_local_gpu_port()
    monkeypatch.setenv("CUI_GPUS", str(index))
    simulator.set_faults(vram_free_mb=500)
    book = Book.objects.create(owner=alice, title="The Fox", **builtin_style())
    long_ago = timezone.now() - timedelta(hours=1)
    BookPage.objects.create(book=book, number=1, prompt="a", status="rendering", attempt=1, lease_expires_at=long_ago)
    BookPage.objects.create(book=book, number=2, prompt="b", status="queued", attempt=1, next_attempt_at=long_ago)
    return {"index": index, "urls": [f"http://127.0.0.1:{port}", simulator.url], "simulator": simulator}


def repair(world: World, systemctl: FakeSystemctl, *args: str) -> int:
    return main(
        [
            "--systemctl",
            systemctl.command,
            "--state-file",
            str(world.state_file),
            "--log-dir",
            str(world.log_dir),
            "--systemd-dir",
            str(world.systemd_dir),
            "--env-file",
            str(world.env_file),
            *args,
        ]
    )


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def by_event(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [record for record in records if record.get("event") == event]


def pages() -> list[tuple[Any, ...]]:
    return list(BookPage.objects.order_by("pk").values_list("status", "attempt", "lease_expires_at", "next_attempt_at"))


def test_a_dry_run_prints_the_plan_and_changes_nothing(broken, world: World, systemctl: FakeSystemctl, capsys):
    tree, rows, frees = world.tree(), pages(), broken["simulator"].stats()["free_calls"]

    with override_settings(COMFYUI_URLS=broken["urls"]):
        code = repair(world, systemctl, "--dry-run")
    records = lines(capsys.readouterr().out)

    # Nothing changed: files, links and modes; systemctl never ran; the database and ComfyUI as before.
    assert world.tree() == tree
    assert systemctl.calls() == []
    assert pages() == rows
    assert broken["simulator"].stats()["free_calls"] == frees
    assert not world.state_file.exists()

    assert code == 1  # problems with no automatic repair (the web port, the sdxl checkpoint)
    assert all(record["dry_run"] for record in records if "dry_run" in record)
    index = broken["index"]
    restarts = by_event(records, "repair.restart")
    assert [(r["target"], r["outcome"]) for r in restarts] == [
        (f"comfyui@{index}.service", "planned"),
        (f"bookrender-worker@{index}.service", "planned"),
    ]
    assert restarts[0]["commands"][1].endswith(f"--no-ask-password restart comfyui@{index}.service")
    assert (
        by_event(records, "repair.free-vram")[0]["msg"]
        == f"would POST {broken['simulator'].url}/free (unload models, free memory)"
    )
    relink = by_event(records, "repair.relink")[0]
    # Model paths are logged as their kind only (config/logging.py redacts the rest).
    assert relink["outcome"] == "planned" and relink["msg"].startswith("would point …/models/checkpoints at")
    requeue = by_event(records, "repair.requeue")[0]
    assert (requeue["rendering_without_worker"], requeue["queued_not_taken"]) == (1, 1)
    for event, files in (("repair.clean-temp", 1), ("repair.clean-output", 1), ("repair.clean-logs", 1)):
        record = by_event(records, event)[0]
        assert (record["outcome"], record["files"]) == ("planned", files), record
    drift = "\n".join(r["msg"] for r in by_event(records, "repair.drift"))
    assert "is readable by everyone (mode 0644)" in drift
    assert f"comfyui@{index}.service is not enabled, but GPU {index} is in CUI_GPUS" in drift
    assert "is not in COMFYUI_URLS" not in drift  # it is there
    assert "comfyui@.service is not installed" in drift


def test_a_real_run_repairs_what_the_dry_run_planned(broken, world: World, systemctl: FakeSystemctl, capsys):
    frees = broken["simulator"].stats()["free_calls"]

    with override_settings(COMFYUI_URLS=broken["urls"]):
        repair(world, systemctl)
    records = lines(capsys.readouterr().out)
    index = broken["index"]

    assert systemctl.calls() == [
        f"--no-ask-password reset-failed comfyui@{index}.service",
        f"--no-ask-password restart comfyui@{index}.service",
        f"--no-ask-password reset-failed bookrender-worker@{index}.service",
        f"--no-ask-password restart bookrender-worker@{index}.service",
    ]
    assert broken["simulator"].stats()["free_calls"] == frees + 1
    assert os.readlink(world.data_dir / "models/checkpoints") == str(world.models_dir / "checkpoints")
    # Old files went, new ones and the live log stayed, and so did the folders still in use.
    assert not (world.data_dir / "temp/0/temp/preview_old.png").exists()
    assert (world.data_dir / "temp/0/temp/preview_new.png").exists()
    assert not (world.data_dir / "output/bookrender/book-1").exists()
    assert (world.data_dir / "output/bookrender/book-2/page-0001_new.png").exists()
    assert sorted(p.name for p in world.log_dir.iterdir()) == [
        "models-integ.log",
        "models-integ.log-20991231",
        "ops-maint.log",
    ]
    # The sweeper put the page whose worker died back in the queue (same attempt).
    assert BookPage.objects.get(number=1).status == "queued"
    assert by_event(records, "repair.requeue")[0]["resumed"] == 1
    assert set(json.loads(world.state_file.read_text())) == {
        f"comfyui@{index}.service",
        f"bookrender-worker@{index}.service",
    }
    # Every action is one JSON line, also in ops-maint.log; the model link also in models-integ.log.
    assert all(r["outcome"] != "planned" for r in records if "outcome" in r)
    assert '"event": "repair.relink"' in (world.log_dir / "models-integ.log").read_text()
    assert '"event": "repair.restart"' in (world.log_dir / "ops-maint.log").read_text()


def test_mode_health_check_only_repairs_what_the_checks_flagged(broken, world: World, systemctl, capsys):
    with override_settings(COMFYUI_URLS=broken["urls"]):
        repair(world, systemctl, "--dry-run", "--mode", "health-check")
    records = lines(capsys.readouterr().out)

    plan = by_event(records, "repair.plan")[0]["actions"]
    assert "clean-logs logs" not in plan and "drift configuration" not in plan
    assert f"restart comfyui@{broken['index']}.service" in plan and "requeue stuck pages" in plan


def test_restarts_stop_after_three_an_hour_and_alert_instead(
    db, world: World, systemctl, webhook: Webhook, monkeypatch
):
    monkeypatch.setenv("BOOKRENDER_ALERT_WEBHOOK_URL", webhook.url)
    ctx = context_from_environment()

    def restart_at(now: float) -> str:
        run = Repair(
            ctx=ctx,
            dry_run=False,
            systemctl=[systemctl.command],
            state_file=world.state_file,
            log_dir=None,
            paths=SystemPaths(),
            now=now,
        )
        outcome = unit_restart(run, Action("restart", "comfyui@0.service", "comfyui@0 http: down"))
        for thread in run.alerts:
            thread.join(10)
        return outcome.outcome

    start = time.time()
    assert [restart_at(start + minute * 60) for minute in range(4)] == ["done", "done", "done", "rate-limited"]
    assert len(systemctl.calls()) == 6  # three restarts, each with its reset-failed
    assert webhook.received[0]["title"].startswith("comfyui@0.service was restarted 3 times in the last hour")
    # An hour after the first restart, one more is allowed.
    assert restart_at(start + 3600 + 1) == "done"


def test_a_model_link_with_nothing_to_point_at_needs_a_person(db, world: World, systemctl, capsys):
    (world.models_dir / "checkpoints").rmdir()
    repair(world, systemctl, "--mode", "health-check")
    relink = by_event(lines(capsys.readouterr().out), "repair.relink")[0]
    assert relink["outcome"] == "failed" and "model storage has no checkpoints" in relink["msg"]
    assert (world.data_dir / "models/checkpoints").is_symlink()


def test_the_script_runs_from_anywhere_and_every_line_is_json(tmp_path: Path, systemctl: FakeSystemctl):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "ops/repair/auto-repair.py"),
            "--dry-run",
            "--mode",
            "health-check",
            "--systemctl",
            systemctl.command,
        ],
        cwd=tmp_path,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    records = lines(result.stdout)
    assert records[0]["event"] == "repair.plan" and records[0]["dry_run"] is True
    assert systemctl.calls() == []
