"""Logging for the operations scripts: JSON lines (config/logging.py's format) on a stream for
journald, and, when a log folder is given, the files seed 000 names under /var/log/comfyui:
ops-maint.log for health checks and repairs, models-integ.log for model storage and links."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import TextIO

from config.logging import JsonFormatter

OPS_LOGGER = "bookrender.ops"
MODELS_LOGGER = "bookrender.ops.models"
# MODELS_LOGGER is a child of OPS_LOGGER: model lines land in both files (ops-maint.log is the
# whole operations journal).
LOG_FILES = {OPS_LOGGER: "ops-maint.log", MODELS_LOGGER: "models-integ.log"}


def logs_setup(*, stream: TextIO, level: str, log_dir: Path | None) -> None:
    """Replaces the handlers Django's LOGGING installed: the health check's stdout is its report,
    so its log lines go to stderr (journald takes both)."""
    formatter = JsonFormatter()
    console = logging.StreamHandler(stream)
    console.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [console]
    root.setLevel(level)
    for name, filename in LOG_FILES.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        if log_dir is not None:
            # Reopens the file after logrotate renamed it (ops/logrotate/comfyui uses create).
            handler = logging.handlers.WatchedFileHandler(log_dir / filename, encoding="utf-8")
            handler.setFormatter(formatter)
            logger.addHandler(handler)
