"""A malformed or unknown setting stops start-up with a message that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage_check(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "CELERY_", "BOOKRENDER_REQUIRE"))}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "ERROR"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_default_configuration_passes_its_checks():
    result = manage_check()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("COMFY_MAX_RETRIES", "three", "expected a whole number"),
        ("COMFY_MAX_RETRIES", "-1", "must be at least 0"),
        ("COMFY_RETRY_BACKOFF_SEC", "15,soon,90", "comma-separated numbers"),
        ("COMFY_ALLOW_PARALLEL_PAGES", "maybe", "expected true or false"),
        ("COMFY_RENDER_TIMEOUT_SEC", "0", "must be at least 1"),
        ("COMFY_LEASE_SEC", "nan", "expected a finite number"),
        ("COMFY_LEASE_SEC", "inf", "expected a finite number"),
        ("COMFY_RENDER_TIMEOUT_SEC", "Infinity", "expected a finite number"),
        ("COMFY_RETRY_BACKOFF_SEC", "15,nan", "expected finite numbers"),
        ("COMFY_MAX_IMAGE_MB", "0", "must be at least 1"),
        ("COMFYUI_URLS", "localhost:8188", "is not an http(s) base URL"),
        ("REDIS_URL", "http://127.0.0.1:6379", "redis://"),
        ("DATABASE_URL", "nonsense://", "not a database URL"),
    ],
)
def test_it_refuses_a_malformed_value_naming_the_variable(name: str, value: str, says: str):
    result = manage_check(**{name: value})
    assert result.returncode != 0
    assert "renders.E001" in result.stderr
    assert name in result.stderr and says in result.stderr


def test_it_refuses_an_unknown_variable_and_suggests_the_right_one():
    result = manage_check(COMFY_MAX_RETRY="5")
    assert result.returncode != 0
    assert "renders.E002" in result.stderr
    assert "COMFY_MAX_RETRY is not a bookrender setting" in result.stderr
    assert "Did you mean COMFY_MAX_RETRIES?" in result.stderr


def test_it_refuses_contradictory_celery_time_limits():
    result = manage_check(CELERY_TASK_SOFT_TIME_LIMIT="900", CELERY_TASK_TIME_LIMIT="800")
    assert result.returncode != 0
    assert "renders.E011" in result.stderr


def test_it_refuses_a_visibility_timeout_shorter_than_the_hard_limit():
    result = manage_check(CELERY_VISIBILITY_TIMEOUT="60")
    assert "renders.E012" in result.stderr and result.returncode != 0


def test_it_refuses_a_backoff_as_long_as_the_visibility_timeout():
    result = manage_check(COMFY_RETRY_BACKOFF_SEC="15,4000", CELERY_VISIBILITY_TIMEOUT="4000")
    assert "renders.E020" in result.stderr and result.returncode != 0
    assert "COMFY_RETRY_BACKOFF_SEC" in result.stderr and "CELERY_VISIBILITY_TIMEOUT (4000)" in result.stderr
    assert "renders.E020" not in manage_check(COMFY_RETRY_BACKOFF_SEC="15,3000").stderr


def test_it_refuses_a_task_limit_shorter_than_the_render_timeout():
    result = manage_check(
        COMFY_RENDER_TIMEOUT_SEC="1200", CELERY_TASK_SOFT_TIME_LIMIT="600", CELERY_TASK_TIME_LIMIT="700"
    )
    assert "renders.E013" in result.stderr and result.returncode != 0


def test_it_refuses_a_broken_workflow_template(tmp_path: Path):
    (tmp_path / "broken.json").write_text('{"prompt": {')
    result = manage_check(BOOKRENDER_WORKFLOWS_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "renders.E003" in result.stderr and "broken" in result.stderr and "not valid JSON" in result.stderr


def test_it_refuses_sqlite_when_postgres_is_required(tmp_path: Path):
    result = manage_check(BOOKRENDER_REQUIRE_POSTGRES="1", DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert result.returncode != 0
    assert "renders.E005" in result.stderr


def test_a_celery_worker_refuses_to_start_with_a_bad_setting():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_", "CELERY_"))}
    env["COMFY_MAX_RETRIES"] = "lots"
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "COMFY_MAX_RETRIES" in result.stdout + result.stderr
