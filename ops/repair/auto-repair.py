#!/usr/bin/env python3
"""Auto-repair for bookrender and its ComfyUI instances; see ops/repair/cli.py or --help.
Run by comfyui-repair.service every 10 minutes. Try it with --dry-run first."""

import sys
from pathlib import Path

# The project root, so that this file runs from anywhere (as systemd runs it).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.repair.cli import main

if __name__ == "__main__":
    sys.exit(main())
