"""Metrics, the telemetry contract and log hygiene, on a book rendered with injected faults by a
real worker against the simulator."""

from __future__ import annotations

import logging
import re

import pytest
from django.core.management import call_command
from django.test import override_settings

from books.models import BookPage
from books.services import PageSpec, book_create
from config.logging import JsonFormatter
from renders.models import RenderAttempt
from renders.telemetry import telemetry_problems
from tests.conftest import wait_for

Status = BookPage.Status
FAMILIES = [
    "bookrender_pages",
    "bookrender_page_retries_total",
    "bookrender_render_attempts_total",
    "bookrender_render_duration_seconds_count",
    "bookrender_completion_detection_seconds_count",
    "bookrender_celery_queue_length",
    "bookrender_instance_up",
    "bookrender_instance_queue_length",
    "bookrender_gpu_vram_free_mb",
    "bookrender_gpu_vram_total_mb",
    "bookrender_disk_free_ratio",
]


@pytest.fixture
def rendered_book(alice, simulator, start_worker, start_beat, broker):
    simulator.set_faults(oom={"count": 1}, garbage={"count": 1}, render_time="0.2")
    env = {"COMFYUI_URLS": simulator.url, "COMFY_RETRY_BACKOFF_SEC": "0.2", "COMFY_POLL_INTERVAL_SEC": "0.5"}
    start_worker(**env)
    start_beat(**env)
    book = book_create(
        owner=alice, title="Faults", style="model-free", pages=[PageSpec(f"page {n}") for n in range(1, 5)]
    )
    wait_for(lambda: book.pages.filter(status=Status.DONE).count() == 4, timeout=60)
    wait_for(
        lambda: __import__("renders.models").models.ComfyInstance.objects.filter(readings_at__isnull=False).exists(),
        timeout=20,
    )
    return book


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken")
    assert response.status_code == 200
    values: dict[str, float] = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


@pytest.mark.django_db(transaction=True)
@override_settings(BOOKRENDER_METRICS_TOKEN="t0ken")
def test_every_metric_family_has_values_after_a_book_with_faults(rendered_book, client):
    values = scrape(client)
    # Queue lengths are rightly 0 once the book is done; they must be there, with a value.
    at_rest = {"bookrender_celery_queue_length", "bookrender_instance_queue_length"}
    for family in FAMILIES:
        assert family in values, family
        assert values[family] > 0 or family in at_rest, (family, values[family])
    assert values["bookrender_page_retries_total"] == 2  # one OOM, one garbage answer
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").content.decode()
    assert 'bookrender_render_attempts_total{kind="oom",outcome="failed"} 1.0' in text
    assert 'bookrender_render_attempts_total{kind="protocol",outcome="failed"} 1.0' in text
    assert 'bookrender_pages{status="done"} 4.0' in text


@pytest.mark.django_db(transaction=True)
def test_the_telemetry_of_a_real_book_keeps_the_contract_and_a_corrupt_row_is_named(rendered_book, capsys):
    call_command("verify_telemetry")
    assert "all within the contract" in capsys.readouterr().out

    attempt = RenderAttempt.objects.filter(outcome="success").order_by("pk").first()
    broken = {**attempt.telemetry, "HistoryExitReason": "gave up"}
    del broken["VramAfterMB"]
    RenderAttempt.objects.filter(pk=attempt.pk).update(telemetry=broken)
    with pytest.raises(SystemExit) as exit_:
        call_command("verify_telemetry")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    where = f"book {attempt.page.book_id} page {attempt.page.number} attempt {attempt.number}"
    assert f"{where} (success): VramAfterMB is missing" in err
    assert f"{where} (success): HistoryExitReason 'gave up' is not one of" in err


@pytest.mark.django_db
def test_verify_telemetry_since_skips_older_attempts_and_refuses_a_bad_date(capsys):
    call_command("verify_telemetry", since="2099-01-01")
    assert "0 attempt(s)" in capsys.readouterr().out
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not an ISO date"):
        call_command("verify_telemetry", since="last week")


def test_the_contract_catches_each_kind_of_violation():
    good = {
        "VramBeforeMB": 9000,
        "VramAfterMB": 8800,
        "HistoryAttempts": 1,
        "HistoryExitReason": "success",
        "ExecutionSuccessAt": "2026-11-23T10:00:00+00:00",
        "DoneMarkerDetected": True,
        "FallbackNotes": [],
    }
    assert telemetry_problems(good, success=True) == []
    assert ("VramBeforeMB", "is null and no FallbackNotes entry says why") in telemetry_problems(
        {**good, "VramBeforeMB": None}, success=True
    )
    assert (
        telemetry_problems({**good, "VramBeforeMB": None, "FallbackNotes": ["/system_stats unavailable"]}, success=True)
        == []
    )
    assert telemetry_problems({**good, "DoneMarkerDetected": False}, success=True)[0][0] == "DoneMarkerDetected"
    assert telemetry_problems({**good, "ExecutionSuccessAt": "yesterday"}, success=True)[0][0] == "ExecutionSuccessAt"
    assert telemetry_problems({**good, "HistoryAttempts": -1}, success=False)[0][0] == "HistoryAttempts"
    assert telemetry_problems("nope", success=False) == [("telemetry", "is not an object")]


@pytest.mark.django_db
def test_the_web_app_reports_its_health(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.content == b"ok\n"


def test_logs_are_json_lines_without_secrets_or_model_paths():
    record = logging.makeLogRecord(
        {
            "msg": "loading /opt/ComfyUI/models/checkpoints/sd_xl.safetensors via redis://:hunter2@db:6379/0",
            "levelname": "INFO",
            "name": "t",
            "page": 3,
            "event": "book.page.done",
        }
    )
    line = JsonFormatter().format(record)
    assert "hunter2" not in line and "/opt/ComfyUI" not in line
    assert "checkpoints/sd_xl.safetensors" in line and "redis://***@db" in line
    assert '"page": 3' in line and '"event": "book.page.done"' in line


def test_tokens_and_configured_secrets_never_reach_a_log_line(monkeypatch):
    monkeypatch.setenv("BOOKRENDER_METRICS_TOKEN", "m3trics-s3cret")
    monkeypatch.setenv("DATABASE_URL", "postgres://bookrender:pg-pa55word@db/bookrender")
    record = logging.makeLogRecord(
        {
            "msg": "GET https://x.org/hook?token=abc123&page=2 Authorization: Bearer eyJhbGciOi.x "
            "https://ghp_tok3n@github.com/a failed: password pg-pa55word, metrics m3trics-s3cret",
            "levelname": "WARNING",
            "name": "t",
        }
    )
    line = JsonFormatter().format(record)
    for secret in ("abc123", "eyJhbGciOi", "ghp_tok3n", "pg-pa55word", "m3trics-s3cret"):
        assert secret not in line, secret
    assert "page=2" in line and "github.com/a" in line and "token=***" in line
