"""ops/health/health-check.py: what it reports about each service, its exit status, and its alerts."""

from __future__ import annotations

import io
import json
import socket
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
from ops.health import alerts
from ops.health.checks import check_family, listening_sockets
from ops.health.cli import main
from ops.health.logs import logs_setup
from renders.workflows import template_load
from tests.conftest import builtin_style, service_env
from tests.ops.conftest import Webhook, World, free_local_gpu_port

ROOT = Path(__file__).resolve().parents[2]


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["--json", *args])
    return code, json.loads(capsys.readouterr().out)


def results(report: dict[str, Any], service: str | None = None) -> dict[str, dict[str, Any]]:
    return {r["check"]: r for r in report["results"] if service is None or r["service"] == service}


def test_a_healthy_instance_is_ok(simulator, capsys):
    with override_settings(COMFYUI_URLS=[simulator.url]):
        code, report = check(capsys, "--service", "comfyui")

    found = results(report)
    assert code == 0 and report["status"] == "ok"
    assert found["http"]["status"] == "ok" and "answered /system_stats" in found["http"]["message"]
    assert found["vram"]["status"] == "ok" and found["vram"]["value"] == 14000
    assert found["queue"]["message"] == "0 running, 0 waiting"


@pytest.mark.parametrize(
    ("free_mb", "status", "code"),
    [(2500, "warning", 1), (800, "critical", 2)],
)
def test_it_flags_an_instance_short_of_vram(simulator, capsys, free_mb, status, code):
    simulator.set_faults(vram_free_mb=free_mb)
    with override_settings(COMFYUI_URLS=[simulator.url]):
        exit_code, report = check(capsys, "--service", "comfyui", "--dry-run")

    assert exit_code == code
    assert results(report)["vram"]["status"] == status
    assert f"{free_mb} MB free" in results(report)["vram"]["message"]


def test_thresholds_come_from_the_environment(simulator, capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_HEALTH_VRAM_WARN_MB", "15000")
    monkeypatch.setenv("BOOKRENDER_HEALTH_QUEUE_WARN", "0")
    simulator.set_faults(render_time="5")
    graph = template_load("model-free").fill(
        prompt="a fox", negative_prompt="", seed=1, filename_prefix="t", width=64, height=64
    )
    simulator.submit(graph)
    with override_settings(COMFYUI_URLS=[simulator.url]):
        code, report = check(capsys, "--service", "comfyui")

    assert code == 1
    assert results(report)["vram"]["status"] == "warning"
    assert results(report)["queue"]["status"] == "warning" and "more than 0" in results(report)["queue"]["message"]


def test_an_instance_that_does_not_answer_is_critical_and_names_its_unit(capsys):
    index, port = free_local_gpu_port()
    with override_settings(COMFYUI_URLS=[f"http://127.0.0.1:{port}"]):
        code = main(["--service", f"comfyui@{index}", "--dry-run"])
    out = capsys.readouterr().out

    assert code == 2
    assert f"CRITICAL      comfyui@{index}  http  http://127.0.0.1:{port} does not answer" in out
    assert out.startswith("bookrender health on ") and "CRITICAL (" in out and "[dry run: no alert sent]" in out


def test_without_a_gpu_the_gpu_readings_are_not_available_and_not_a_failure(capsys, monkeypatch):
    monkeypatch.setattr("ops.health.checks.nvml_read", lambda index: None)
    with override_settings(COMFYUI_URLS=["http://127.0.0.1:8188", "http://127.0.0.1:8189"]):
        code, report = check(capsys, "--service", "gpu")

    assert code == 0
    assert [(r["service"], r["status"]) for r in report["results"]] == [
        ("gpu0", "not available"),
        ("gpu1", "not available"),
    ]


def test_a_hot_gpu_is_a_warning_then_critical(capsys, monkeypatch):
    from renders.gpu import NvmlReading

    def reading(celsius: int) -> NvmlReading:
        return NvmlReading(0, "NVIDIA H100", 81559, 1000, 80559, 97, celsius, 300.0)

    with override_settings(COMFYUI_URLS=["http://127.0.0.1:8188"]):
        monkeypatch.setattr("ops.health.checks.nvml_read", lambda index: reading(88))
        assert check(capsys, "--service", "gpu0", "--dry-run")[0] == 1
        monkeypatch.setattr("ops.health.checks.nvml_read", lambda index: reading(97))
        code, report = check(capsys, "--service", "gpu0", "--dry-run")

    assert code == 2 and "97 °C" in report["results"][0]["message"]


def test_redis_and_the_database_answer(db, capsys):
    code, report = check(capsys, "--service", "redis", "--service", "postgresql")
    assert code == 0
    assert [r["service"] for r in report["results"]] == ["redis", "database"]


def test_no_worker_answering_is_critical(capsys, own_broker):
    code, report = check(capsys, "--service", "celery", "--dry-run")
    assert code == 2 and "no Celery worker answered" in report["results"][0]["message"]


def test_on_a_managed_host_each_gpu_needs_its_own_worker(capsys, monkeypatch, own_broker):
    monkeypatch.setenv("CUI_GPUS", "0 1")
    code, report = check(capsys, "--service", "celery", "--dry-run")
    assert code == 2
    assert [(r["service"], r["unit"]) for r in report["results"]] == [
        ("worker0", "bookrender-worker@0.service"),
        ("worker1", "bookrender-worker@1.service"),
    ]


def test_a_running_worker_answers(start_worker, simulator, capsys, own_broker):
    worker = start_worker(COMFYUI_URLS=simulator.url, concurrency=1, CELERY_BROKER_URL=own_broker)
    code, report = check(capsys, "--service", "celery")
    [result] = report["results"]
    assert code == 0 and result["value"] == 1  # ours, and no other
    assert result["message"] == f"1 answered: {worker.hostname}"


def test_stuck_pages_are_a_warning(alice, capsys):
    book = Book.objects.create(owner=alice, title="The Fox", **builtin_style())
    long_ago = timezone.now() - timedelta(hours=1)
    BookPage.objects.create(book=book, number=1, prompt="a", status="rendering", lease_expires_at=long_ago)
    BookPage.objects.create(book=book, number=2, prompt="b", status="queued", next_attempt_at=long_ago)
    BookPage.objects.create(book=book, number=3, prompt="c", status="queued", next_attempt_at=timezone.now())

    code, report = check(capsys, "--service", "pages")

    assert code == 1
    message = report["results"][0]["message"]
    assert "2 queued, 1 rendering" in message
    assert "1 rendering without a worker, 1 queued and not taken" in message


@pytest.mark.django_db  # the workflows whose models are checked are in the registry
def test_model_storage_links_and_workflow_models(world: World, capsys):
    code, report = check(capsys, "--service", "models", "--dry-run")
    by_check = {r["check"]: r for r in report["results"] if r["check"] != "workflow"}

    assert code == 2
    assert by_check["storage"]["status"] == "ok" and "checkpoints, loras" in by_check["storage"]["message"]
    assert by_check["link"]["status"] == "critical"
    assert by_check["link"]["path"] == str(world.data_dir / "models/checkpoints")
    missing = [r for r in report["results"] if r["check"] == "workflow"]
    assert missing and "sd_xl_base_1.0.safetensors" in missing[0]["message"]


def test_missing_model_storage_is_critical(world: World, capsys, monkeypatch):
    monkeypatch.setenv("CUI_MODELS_DIR", str(world.root / "nowhere"))
    code, report = check(capsys, "--service", "models", "--dry-run")
    assert code == 2 and "is missing" in report["results"][0]["message"]


def test_low_disk_space_is_critical(world: World, capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_HEALTH_DISK_FREE_CRIT_PCT", "100")
    monkeypatch.setenv("BOOKRENDER_HEALTH_DISK_FREE_WARN_PCT", "100")
    code, report = check(capsys, "--service", "disk", "--dry-run")
    assert code == 2
    assert {r["check"]: r["status"] for r in report["results"]} == {
        "models": "critical",
        "media": "critical",
        "comfyui-data": "critical",
    }


def test_memory_and_cpu_are_read(capsys):
    _, report = check(capsys, "--service", "system")
    assert {r["check"] for r in report["results"]} == {"cpu", "memory"}
    assert all(isinstance(r["value"], float) for r in report["results"])


def test_a_port_held_by_the_wrong_process_is_a_warning(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port in listening_sockets()
        with override_settings(
            BOOKRENDER_WEB_PORT=port, BOOKRENDER_FLOWER_PORT=port, COMFYUI_URLS=["http://gpu9:8188"]
        ):
            code, report = check(capsys, "--service", "ports")

    web = results(report)[f"web :{port}"]
    assert code == 1
    assert web["status"] == "warning" and "expected gunicorn or runserver" in web["message"]


def test_a_misspelt_setting_is_critical(capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_HEALTH_VRAM_WARN_MBB", "2000")
    code, report = check(capsys, "--service", "config")
    assert code == 2
    assert results(report)["BOOKRENDER_HEALTH_VRAM_WARN_MBB"]["message"].endswith("bookrender refuses to start")


def test_it_refuses_an_unknown_service(capsys):
    assert main(["--service", "env-setup"]) == 2
    assert "unknown service env-setup" in capsys.readouterr().err


def test_service_names_map_to_their_checks():
    assert [check_family(name) for name in ("comfyui@1", "gpu0", "worker3", "postgresql", "nope")] == [
        "comfyui",
        "gpu",
        "celery",
        "database",
        None,
    ]


# --- alerts --------------------------------------------------------------------------------------


@pytest.fixture
def dead_instance() -> str:
    return f"http://127.0.0.1:{free_local_gpu_port()[1]}"


def test_a_critical_result_goes_to_the_webhook_after_retries(webhook: Webhook, dead_instance, capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setattr(alerts, "BACKOFF_SEC", (0.01, 0.01))
    webhook.answers = [503]
    with override_settings(COMFYUI_URLS=[dead_instance]):
        code = main(["--service", "comfyui"])
    logs = capsys.readouterr().err

    assert code == 2
    assert len(webhook.received) == 2  # a 503, then delivered
    payload = webhook.received[-1]
    assert payload["title"] == "1 critical health result" and "does not answer" in payload["text"]
    assert '"event": "alert.retry"' in logs and '"event": "alert.sent"' in logs


def test_a_dry_run_sends_no_alert_but_logs_it(webhook: Webhook, dead_instance, capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_ALERT_WEBHOOK_URL", webhook.url)
    with override_settings(COMFYUI_URLS=[dead_instance]):
        code = main(["--service", "comfyui", "--dry-run"])
    logs = capsys.readouterr().err

    assert code == 2 and webhook.received == []
    alert = next(json.loads(line) for line in logs.splitlines() if '"event": "alert"' in line)
    assert alert["delivery"] == "dry run: not sent" and alert["problems"][0]["check"] == "http"


def test_without_a_webhook_the_alert_is_logged(dead_instance, capsys, monkeypatch):
    monkeypatch.delenv("BOOKRENDER_ALERT_WEBHOOK_URL", raising=False)
    with override_settings(COMFYUI_URLS=[dead_instance]):
        assert main(["--service", "comfyui"]) == 2
    assert '"delivery": "no webhook configured"' in capsys.readouterr().err


def test_a_hanging_webhook_never_holds_the_check_up(webhook: Webhook, dead_instance, capsys, monkeypatch):
    monkeypatch.setenv("BOOKRENDER_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setattr(alerts, "DEADLINE_SEC", 0.5)
    webhook.delay = 6
    started = time.monotonic()
    with override_settings(COMFYUI_URLS=[dead_instance]):
        code = main(["--service", "comfyui"])
    captured = capsys.readouterr()

    # Waiting for the webhook would take its whole delay: less than that means it was abandoned.
    assert code == 2 and time.monotonic() - started < webhook.delay
    assert "does not answer" in captured.out
    assert '"event": "alert.abandoned"' in captured.err


def test_the_script_runs_from_anywhere_and_prints_json(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops/health/health-check.py"), "--service", "redis", "--json"],
        cwd=tmp_path,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["service"] == "redis"


def test_a_failed_alert_never_logs_the_webhooks_secret_path(dead_instance, monkeypatch):
    url = f"{dead_instance}/services/T0SECRET/B0SECRET/xoxb-abcdef123456"
    monkeypatch.setenv("BOOKRENDER_ALERT_WEBHOOK_URL", url)
    stream = io.StringIO()
    logs_setup(stream=stream, level="INFO", log_dir=None)
    assert alerts.alert_post(url, alerts.alert_payload(title="t", problems=[]), tries=1) is False
    logs = stream.getvalue()
    assert '"event": "alert.retry"' in logs and "ConnectionError" in logs  # still says what went wrong
    assert "T0SECRET" not in logs and "xoxb-abcdef123456" not in logs


@pytest.mark.django_db
def test_a_comfyui_on_any_port_keeps_the_gpu_index_of_its_record(capsys):
    from renders.models import ComfyInstance

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # far from 8188 + index: its port says nothing about its GPU
        sock.listen()
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        ComfyInstance.objects.create(url=url, gpu_index=5)
        with override_settings(COMFYUI_URLS=[url]):
            _, report = check(capsys, "--service", "ports")

    held = results(report)[f"comfyui@5 :{port}"]  # checked, under its unit's name, not skipped
    assert f"port {port} is held by" in held["message"]
