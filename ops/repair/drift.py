"""Configuration drift between bookrender's env file, the installed systemd units, this host's
ComfyUI setup (/etc/default/comfyui) and the app's settings. Reported, never changed: each finding
says what to do."""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from config import env
from ops.health.inventory import Host, Instance

SHIPPED_UNITS = Path(__file__).resolve().parent.parent / "services"
# Processes of bookrender's units, as their command lines show them (ops/services/bookrender-*).
APP_COMMANDS = ("gunicorn config.wsgi", "celery -A config")


@dataclass(frozen=True)
class SystemPaths:
    systemd_dir: Path = Path("/etc/systemd/system")
    env_file: Path = Path("/etc/bookrender/bookrender.env")


@dataclass(frozen=True)
class Drift:
    what: str
    detail: str


def drift_find(*, host: Host, instances: list[Instance], paths: SystemPaths) -> list[Drift]:
    found: list[Drift] = []
    if host.managed:
        found += _model_dirs(host)
        found += _urls_against_gpus(host, instances)
        found += _enabled_units_against_gpus(host, paths.systemd_dir)
        found += _installed_units_against_shipped(paths.systemd_dir)
    if paths.env_file.exists():
        found += _env_file(paths)
    return found


def _model_dirs(host: Host) -> list[Drift]:
    """bookrender's disk metric (BOOKRENDER_MODEL_DIR) must watch the storage ComfyUI reads."""
    app = settings.BOOKRENDER_MODEL_DIR
    comfy = os.environ.get("CUI_MODELS_DIR", "")
    if app and comfy and Path(app) != Path(comfy):
        return [Drift("BOOKRENDER_MODEL_DIR", f"BOOKRENDER_MODEL_DIR is {app} but CUI_MODELS_DIR is {comfy}")]
    return []


def _urls_against_gpus(host: Host, instances: list[Instance]) -> list[Drift]:
    in_urls = {instance.gpu_index for instance in instances if instance.gpu_index is not None}
    gpus = set(host.gpus or [])
    found = []
    for index in sorted(gpus - in_urls):
        found.append(
            Drift(
                "COMFYUI_URLS", f"GPU {index} is in CUI_GPUS but http://127.0.0.1:{8188 + index} is not in COMFYUI_URLS"
            )
        )
    for index in sorted(in_urls - gpus):
        found.append(Drift("COMFYUI_URLS", f"COMFYUI_URLS has port {8188 + index} but GPU {index} is not in CUI_GPUS"))
    return found


def _enabled_units_against_gpus(host: Host, systemd_dir: Path) -> list[Drift]:
    found = []
    gpus = set(host.gpus or [])
    for wants, pattern in (
        ("multi-user.target.wants", r"comfyui@(\d+)\.service"),
        ("bookrender.target.wants", r"bookrender-worker@(\d+)\.service"),
    ):
        folder = systemd_dir / wants
        enabled = {int(m.group(1)) for p in folder.glob("*") if (m := re.fullmatch(pattern, p.name))}
        unit = pattern.split("@")[0]
        for index in sorted(gpus - enabled):
            found.append(Drift("units", f"{unit}@{index}.service is not enabled, but GPU {index} is in CUI_GPUS"))
        for index in sorted(enabled - gpus):
            found.append(Drift("units", f"{unit}@{index}.service is enabled, but GPU {index} is not in CUI_GPUS"))
    return found


def _installed_units_against_shipped(systemd_dir: Path) -> list[Drift]:
    found = []
    shipped_units = [
        path for path in sorted(SHIPPED_UNITS.iterdir()) if path.suffix in (".service", ".timer", ".target")
    ]
    for shipped in shipped_units:
        installed = systemd_dir / shipped.name
        if not installed.exists():
            found.append(Drift("units", f"{shipped.name} is not installed: run ops/install.sh"))
        elif installed.read_bytes() != shipped.read_bytes():
            found.append(
                Drift(
                    "units",
                    f"{installed} differs from ops/services/{shipped.name}: run ops/install.sh "
                    f"(local changes belong in a drop-in, {shipped.name}.d/)",
                )
            )
    return found


def _env_file(paths: SystemPaths) -> list[Drift]:
    found = []
    values = env_file_read(paths.env_file)
    for name in sorted(values):
        if name.startswith(env.OWN_PREFIXES) and name not in env.KNOWN:
            found.append(Drift("env file", f"{name} in {paths.env_file} is not a bookrender setting: start-up fails"))
    mode = stat.S_IMODE(paths.env_file.stat().st_mode)
    if mode & 0o007:
        found.append(
            Drift("env file", f"{paths.env_file} is readable by everyone (mode {mode:04o}); it holds secrets: 0640")
        )
    # The units may write only to their StateDirectory (ProtectSystem=strict).
    for name, where in (("BOOKRENDER_VAR_DIR", settings.VAR_DIR), ("BOOKRENDER_MEDIA_ROOT", settings.MEDIA_ROOT)):
        if not str(where).startswith("/var/lib/bookrender"):
            found.append(
                Drift(
                    "settings",
                    f"{name} is {where}, outside /var/lib/bookrender, where the units cannot write "
                    "(add ReadWritePaths= in a drop-in)",
                )
            )
    changed = paths.env_file.stat().st_mtime
    for pid, command, started in app_processes():
        if started < changed:
            found.append(
                Drift(
                    "env file",
                    f"{paths.env_file} changed at {time.ctime(changed)}, after pid {pid} ({command}) started at "
                    f"{time.ctime(started)}: restart bookrender.target to apply it",
                )
            )
    return found


def env_file_read(path: Path) -> dict[str, str]:
    """NAME=VALUE lines, as systemd's EnvironmentFile= reads them (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip().strip("\"'")
    return values


def app_processes() -> list[tuple[int, str, float]]:
    """(pid, command, start time) of bookrender's processes this user can see (same user)."""
    try:
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration):
        return []
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if not any(word in command for word in APP_COMMANDS):
                continue
            # Field 22 of /proc/PID/stat, after the parenthesised command name, is the start time.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(pid), command[:80], boot + int(fields[19]) / ticks))
    return found
