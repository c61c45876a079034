"""A malformed or unknown setting stops start-up with a message that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage_check(*flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMFY_", "CELERY_", "BOOKRENDER_REQUIRE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "FLOWER"))
    }
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "ERROR", *flags],
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


def test_an_empty_comfyui_urls_is_a_pure_fleet_and_passes():
    result = manage_check(COMFYUI_URLS="")
    assert result.returncode == 0, result.stderr


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


def test_it_says_what_to_do_when_the_retired_workflows_folder_is_set(tmp_path: Path):
    result = manage_check(BOOKRENDER_WORKFLOWS_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "renders.E004" in result.stderr and "import_workflows" in result.stderr


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


def test_a_malformed_database_url_is_named_without_its_password():
    result = manage_check(DATABASE_URL="postgres//bookrender:hunter22secret@db/bookrender")
    assert result.returncode != 0
    assert "renders.E001" in result.stderr and "DATABASE_URL" in result.stderr
    assert "hunter22secret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (None, "is a placeholder"),  # the settings' own default
        ("change-me-to-a-long-random-string", "is a placeholder"),  # what the env file used to ship
        ("compose-dev-only-insecure-key", "is a placeholder"),
        ("s3cr3t-but-short", "is too short"),
        ("a" * 60, "is too short"),
    ],
)
def test_the_deploy_check_refuses_a_placeholder_or_weak_secret_key(key: str | None, says: str):
    env = {} if key is None else {"DJANGO_SECRET_KEY": key}
    result = manage_check("--deploy", **env)
    assert result.returncode != 0
    assert "renders.E017" in result.stderr and f"DJANGO_SECRET_KEY {says}" in result.stderr


def test_the_deploy_check_accepts_a_real_key_and_debug_is_left_alone():
    strong = "kX2v9-QmZ7pL4tR8wB1nC6yH3jF0dS5gA_eU7iO2kP9mN4bV8cX1zQ"
    assert manage_check("--deploy", DJANGO_SECRET_KEY=strong).returncode == 0
    assert manage_check("--deploy", DJANGO_DEBUG="true").returncode == 0


def test_an_empty_secret_key_is_named_instead_of_a_traceback():
    result = manage_check(DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "renders.E001" in result.stderr and "DJANGO_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_deploy_is_clean_with_the_production_env_file_filled_in():
    """What README.md's install step 5 asks for: the shipped env file, with a key and a token."""
    from ops.repair.drift import env_file_read

    values = env_file_read(ROOT / "ops/default/bookrender.env")
    values.update(
        DJANGO_SECRET_KEY="kX2v9-QmZ7pL4tR8wB1nC6yH3jF0dS5gA_eU7iO2kP9mN4bV8cX1zQ",
        BOOKRENDER_METRICS_TOKEN="m3trics-t0ken-for-prometheus",
        FLOWER_BASIC_AUTH="ops:Hq8-xW2v-Lp4z-Rt7k",
        # This machine's services and folders instead of the production ones.
        DATABASE_URL=os.environ.get("DATABASE_URL", "sqlite:///var/check-deploy.sqlite3"),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        BOOKRENDER_VAR_DIR=str(ROOT / "var"),
        BOOKRENDER_MEDIA_ROOT=str(ROOT / "var" / "media"),
        BOOKRENDER_REQUIRE_POSTGRES="false",
    )
    result = manage_check("--deploy", **values)
    assert result.returncode == 0, result.stderr
    # The one warning left: preloading HSTS is a commitment the operator makes, not a default.
    warnings = [line for line in result.stdout.splitlines() if "(security." in line or "(renders." in line]
    assert warnings == [line for line in warnings if "security.W021" in line] and len(warnings) <= 1


@pytest.mark.parametrize("login", ["", "admin:change-me", "admin:admin-password", "ops:short"])
def test_the_deploy_check_refuses_a_placeholder_flower_login(login: str):
    strong = "kX2v9-QmZ7pL4tR8wB1nC6yH3jF0dS5gA_eU7iO2kP9mN4bV8cX1zQ"
    result = manage_check("--deploy", DJANGO_SECRET_KEY=strong, FLOWER_BASIC_AUTH=login)
    assert result.returncode != 0 and "renders.E018" in result.stderr
    assert (
        manage_check("--deploy", DJANGO_SECRET_KEY=strong, FLOWER_BASIC_AUTH="ops:Hq8-xW2v-Lp4z-Rt7k").returncode == 0
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BOOKRENDER_STORAGE": "s4"}, "BOOKRENDER_STORAGE"),
        ({"BOOKRENDER_STORAGE": "s3"}, "BOOKRENDER_STORAGE=s3 needs a bucket"),
        ({"BOOKRENDER_S3_BUCKET": "pages"}, "BOOKRENDER_STORAGE is not s3"),
        (
            {"BOOKRENDER_STORAGE": "s3", "BOOKRENDER_S3_BUCKET": "pages", "BOOKRENDER_S3_ACCESS_KEY_ID": "AKIA-test"},
            "BOOKRENDER_S3_SECRET_ACCESS_KEY go together",
        ),
        (
            {"BOOKRENDER_STORAGE": "s3", "BOOKRENDER_S3_BUCKET": "pages", "BOOKRENDER_S3_ENDPOINT_URL": "minio:9000"},
            "BOOKRENDER_S3_ENDPOINT_URL",
        ),
    ],
)
def test_it_refuses_contradictory_storage_settings(env: dict[str, str], says: str):
    result = manage_check(**env)
    assert result.returncode != 0 and "renders.E001" in result.stderr
    assert says in result.stderr


def test_a_complete_s3_configuration_passes_and_its_secret_is_never_shown():
    result = manage_check(
        BOOKRENDER_STORAGE="s3",
        BOOKRENDER_S3_BUCKET="pages",
        BOOKRENDER_S3_ENDPOINT_URL="http://127.0.0.1:9000",
        BOOKRENDER_S3_ACCESS_KEY_ID="AKIA-test",
        BOOKRENDER_S3_SECRET_ACCESS_KEY="very-secret-value",
    )
    assert result.returncode == 0, result.stderr
    assert "very-secret-value" not in result.stdout + result.stderr
