"""docker-compose.yml and the Dockerfile, checked by reading them (no Docker engine here): every
command, port and variable refers to something that exists in the project."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfysim.__main__ import build_parser as comfysim_parser
from config import env
from ops.health.thresholds import alert_webhook_url, repair_policy_from_env, thresholds_from_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP = ["migrate", "web", "worker", "maintenance", "beat", "flower", "comfysim"]
DOCKERIGNORE = [
    line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("#", "")
]


def commands(service: dict[str, Any]) -> list[list[str]]:
    """The service's command as argv lists (``sh -c "a && b"`` is two)."""
    argv = service["command"]
    argv = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def shipped(path: str) -> bool:
    """In the repository and not left out of the image by .dockerignore (/app is the image's WORKDIR)."""
    path = path.removeprefix("/app/")
    first = Path(path).parts[0]
    return (ROOT / path).exists() and not any(fnmatch.fnmatch(first, pattern) for pattern in DOCKERIGNORE)


def test_it_has_the_services_and_profiles():
    apps = {"web", "worker", "maintenance", "beat", "flower", "comfysim", "migrate"}
    assert {"postgres", "redis", "comfyui", *apps} <= set(SERVICES)
    assert SERVICES["comfysim"]["profiles"] == ["simulator"]
    assert SERVICES["comfyui"]["profiles"] == ["gpu"]


def test_the_app_services_share_one_image_built_from_the_dockerfile():
    assert {SERVICES[name]["image"] for name in APP} == {"bookrender:latest"}
    assert {SERVICES[name]["build"] for name in APP} == {"."}
    assert (ROOT / "Dockerfile").exists()


def test_every_long_running_service_has_a_healthcheck():
    for name, service in SERVICES.items():
        if name != "migrate":  # a one-shot: its exit status is its health
            assert service.get("healthcheck", {}).get("test"), name


def test_redis_persists_and_postgres_keeps_its_data():
    assert "--appendonly" in SERVICES["redis"]["command"] and "yes" in SERVICES["redis"]["command"]
    assert "redisdata:/data" in SERVICES["redis"]["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]


def test_the_real_comfyui_reserves_a_gpu():
    devices = SERVICES["comfyui"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]


@pytest.mark.parametrize("name", APP)
def test_every_app_command_exists_in_the_project(name: str):
    for argv in commands(SERVICES[name]):
        program, *args = argv
        if program == "gunicorn":
            module, _, attribute = args[0].partition(":")
            assert shipped(module.replace(".", "/") + ".py") and attribute == "application"
            config = args[args.index("--log-config-json") + 1]
            assert shipped(config)
        elif program == "celery":
            assert args[:2] == ["-A", "config"] and shipped("config/celery.py")
            subcommand = next(arg for arg in args[2:] if not arg.startswith("-"))
            assert subcommand in ("worker", "beat", "flower")
        elif argv[:2] == ["python", "manage.py"]:
            assert shipped("manage.py") and args[1] in ("migrate", "check")
        elif argv[:3] == ["python", "-m", "comfysim"]:
            assert shipped("comfysim/__main__.py")
            comfysim_parser().parse_args(argv[3:])  # every flag is one comfysim takes
        else:
            pytest.fail(f"{name}: unknown command {argv}")


def bound_port(service: dict[str, Any]) -> int:
    argv = " ".join(commands(service)[0])
    match = re.search(r"(?:--bind \S*:|--port[= ])(\d+)", argv)
    assert match, argv
    return int(match.group(1))


@pytest.mark.parametrize("name", ["web", "flower", "comfysim", "comfyui"])
def test_every_published_port_is_the_one_the_command_listens_on(name: str):
    service = SERVICES[name]
    published = {int(str(mapping).split(":")[-1]) for mapping in service.get("ports", service.get("expose", []))}
    assert published == {bound_port(service)}
    assert f"127.0.0.1:{bound_port(service)}/" in " ".join(map(str, service["healthcheck"]["test"]))


def test_ports_are_published_on_loopback_only_and_comfyui_not_at_all():
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond this host"
    assert "ports" not in SERVICES["comfyui"]  # no authentication: only the workers reach it


def test_no_secret_has_a_working_default():
    """A compose file copied to a server must not start with a key or password anyone can read here."""
    for variable in ("DJANGO_SECRET_KEY", "FLOWER_BASIC_AUTH"):
        assert re.search(rf"\$\{{{variable}:\?", COMPOSE_TEXT), f"{variable} is not required"
    assert "admin-password" not in COMPOSE_TEXT and "insecure" not in COMPOSE_TEXT
    assert "--deploy" in SERVICES["migrate"]["command"][2]


def test_healthchecks_ask_urls_the_project_serves():
    from django.urls import resolve

    assert resolve("/healthz").url_name == "healthz"
    assert "/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])  # Flower's own


# Variables that Flower and gunicorn read themselves (README, configuration).
OTHER_PROGRAMS = {"FLOWER_BASIC_AUTH", "GUNICORN_CMD_ARGS"}


def test_every_app_variable_is_one_bookrender_reads():
    thresholds_from_env(), repair_policy_from_env(), alert_webhook_url()  # registers their names
    for name in APP:
        for variable in SERVICES[name]["environment"]:
            assert variable in env.KNOWN or variable in OTHER_PROGRAMS, f"{name}: {variable} is not read by bookrender"


def test_every_interpolated_variable_is_documented_in_the_header():
    header = COMPOSE_TEXT.split("\nx-app:")[0]
    for variable in set(re.findall(r"\$\{(\w+)", COMPOSE_TEXT)):
        assert re.search(rf"^#\s+{variable}\s", header, re.M), f"{variable} is not documented"


def test_app_services_wait_for_the_database_broker_and_migrations():
    for name in ("web", "worker", "maintenance", "beat", "flower"):
        depends = SERVICES[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_the_dockerfile_runs_unprivileged_and_installs_the_pinned_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER bookrender$", dockerfile, re.M)
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']" in dockerfile
    assert shipped("ops/services/gunicorn-logging.json")
