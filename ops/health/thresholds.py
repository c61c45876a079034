"""Health thresholds and repair limits, each overridable by an environment variable.

GPU, queue, disk, memory and latency values come from seed documents 000 and 002; the others are
ours and say so. They are read with config.env's helpers, so a malformed value is reported with
its name (``env.ERRORS``), and config/settings.py registers the same names so that bookrender's
unknown-variable check (renders.E002) accepts them in the shared env file.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.env import env_float, env_int, env_str


@dataclass(frozen=True)
class Thresholds:
    vram_warn_mb: int  # seed 002: free VRAM below 3000 MB is a warning
    vram_crit_mb: int  # seed 002: below 1000 MB is critical
    gpu_temp_warn_c: int  # seed 002: above 85 °C
    gpu_temp_crit_c: int  # seed 002: above 95 °C (throttling)
    queue_warn: int  # seed 002: more than 10 prompts waiting on one ComfyUI
    disk_free_warn_pct: float  # ours: a warning before seed 000's critical
    disk_free_crit_pct: float  # seed 000: below 10 % free on model storage
    memory_warn_pct: float  # seed 000: memory above 80 %
    memory_crit_pct: float  # ours: the OOM killer is close
    load_warn: float  # ours: 1-minute load average per CPU
    slow_sec: float  # seed 000: an API call slower than 5 s
    stuck_page_sec: float  # ours: a page the sweeper should have moved this long ago


@dataclass(frozen=True)
class RepairPolicy:
    max_restarts_per_hour: int  # seed 000: more than 3 restarts an hour is its own alert
    temp_retention_hours: float
    output_retention_days: float  # ComfyUI's copies; bookrender keeps its own in MEDIA_ROOT
    log_retention_days: float  # as ops/logrotate/comfyui (rotate 14, daily)


def thresholds_from_env() -> Thresholds:
    return Thresholds(
        vram_warn_mb=env_int("BOOKRENDER_HEALTH_VRAM_WARN_MB", 3000, minimum=0),
        vram_crit_mb=env_int("BOOKRENDER_HEALTH_VRAM_CRIT_MB", 1000, minimum=0),
        gpu_temp_warn_c=env_int("BOOKRENDER_HEALTH_GPU_TEMP_WARN_C", 85, minimum=0),
        gpu_temp_crit_c=env_int("BOOKRENDER_HEALTH_GPU_TEMP_CRIT_C", 95, minimum=0),
        queue_warn=env_int("BOOKRENDER_HEALTH_QUEUE_WARN", 10, minimum=0),
        disk_free_warn_pct=env_float("BOOKRENDER_HEALTH_DISK_FREE_WARN_PCT", 20, minimum=0),
        disk_free_crit_pct=env_float("BOOKRENDER_HEALTH_DISK_FREE_CRIT_PCT", 10, minimum=0),
        memory_warn_pct=env_float("BOOKRENDER_HEALTH_MEMORY_WARN_PCT", 80, minimum=0),
        memory_crit_pct=env_float("BOOKRENDER_HEALTH_MEMORY_CRIT_PCT", 95, minimum=0),
        load_warn=env_float("BOOKRENDER_HEALTH_LOAD_WARN", 2.0, minimum=0),
        slow_sec=env_float("BOOKRENDER_HEALTH_SLOW_SEC", 5, minimum=0.1),
        stuck_page_sec=env_float("BOOKRENDER_HEALTH_STUCK_PAGE_SEC", 300, minimum=1),
    )


def repair_policy_from_env() -> RepairPolicy:
    return RepairPolicy(
        max_restarts_per_hour=env_int("BOOKRENDER_REPAIR_MAX_RESTARTS_PER_HOUR", 3, minimum=0),
        temp_retention_hours=env_float("BOOKRENDER_REPAIR_TEMP_RETENTION_HOURS", 24, minimum=1),
        output_retention_days=env_float("BOOKRENDER_REPAIR_OUTPUT_RETENTION_DAYS", 14, minimum=1),
        log_retention_days=env_float("BOOKRENDER_REPAIR_LOG_RETENTION_DAYS", 14, minimum=1),
    )


def alert_webhook_url() -> str:
    """Where critical results are POSTed; empty means they are only logged."""
    return env_str("BOOKRENDER_ALERT_WEBHOOK_URL", "")
