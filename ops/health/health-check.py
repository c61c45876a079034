#!/usr/bin/env python3
"""Health checks for bookrender and its ComfyUI instances; see ops/health/cli.py or --help.
Run by comfyui-monitor.service every minute; exit 0 ok, 1 warning, 2 critical."""

import sys
from pathlib import Path

# The project root, so that this file runs from anywhere (as systemd runs it).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.health.cli import main

if __name__ == "__main__":
    sys.exit(main())
