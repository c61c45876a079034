#!/usr/bin/env python3
"""Validate a logrotate config for bookrender's operations logs, without rotating anything.

    python ops/logrotate/validate.py --dry-run --config ops/logrotate/comfyui

Checks what our policy needs (daily, 14 rotations, compressed, new files 0640 and never
world-readable, every log seed 000 names covered), then asks logrotate itself (`logrotate -d`,
debug mode, which changes nothing) whether it accepts the file. Exit 0 valid, 1 not.
``--dry-run`` is the only mode, and is accepted so that the habit of typing it costs nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Seed 000's file logs; the config must rotate every one of them.
EXPECTED_LOGS = (
    "/var/log/comfyui/env-setup.log",
    "/var/log/comfyui/ops-maint.log",
    "/var/log/comfyui/models-integ.log",
)
RETENTION_DAYS = 14


@dataclass
class Block:
    patterns: list[str]
    directives: dict[str, list[str]] = field(default_factory=dict)


def config_parse(text: str) -> list[Block]:
    """The ``patterns { directives }`` blocks of a logrotate config (comments dropped)."""
    blocks: list[Block] = []
    current: Block | None = None
    in_script = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if in_script:
            in_script = line != "endscript"
            continue
        if current is None:
            if line.endswith("{"):
                current = Block(patterns=line[:-1].split())
            continue
        if line == "}":
            blocks.append(current)
            current = None
            continue
        word, *args = line.split()
        if word in ("postrotate", "prerotate", "firstaction", "lastaction", "preremove"):
            in_script = True
        current.directives[word] = args
    return blocks


def config_problems(blocks: list[Block]) -> list[str]:
    problems = []
    if not blocks:
        return ["no log block found"]
    for log in EXPECTED_LOGS:
        if not any(fnmatch.fnmatch(log, pattern) for block in blocks for pattern in block.patterns):
            problems.append(f"{log} is not rotated by any block")
    for block in blocks:
        where = " ".join(block.patterns)
        d = block.directives
        if not all(pattern.startswith("/var/log/comfyui/") for pattern in block.patterns):
            problems.append(f"{where}: rotates files outside /var/log/comfyui/")
        if "daily" not in d:
            problems.append(f"{where}: not daily")
        if d.get("rotate") != [str(RETENTION_DAYS)]:
            problems.append(f"{where}: keeps {d.get('rotate', ['?'])[0]} rotations, not {RETENTION_DAYS} (daily)")
        if "compress" not in d or "nocompress" in d:
            problems.append(f"{where}: not compressed")
        if "missingok" not in d:
            problems.append(f"{where}: a missing log would be an error (missingok)")
        mode = (d.get("create") or [""])[0]
        if "create" not in d:
            problems.append(f"{where}: no create directive, so new logs get whatever mode the writer picks")
        elif not re.fullmatch(r"0?[0-7]{3}", mode) or int(mode, 8) & 0o007:
            problems.append(f"{where}: create {mode or '(no mode)'} lets everyone read the logs; use 0640")
        if "copytruncate" in d:
            problems.append(f"{where}: copytruncate loses lines written during the copy; writers reopen the file")
    return problems


def logrotate_problems(config: Path) -> list[str]:
    """What `logrotate -d` (debug: reads the config, rotates nothing) complains about."""
    binary = shutil.which("logrotate") or ("/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None)
    if binary is None:
        return ["logrotate is not installed (Debian: apt install logrotate)"]
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            [binary, "-d", "--state", str(Path(scratch) / "status"), str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = done.stdout + done.stderr
    problems = [line.strip() for line in output.splitlines() if line.lower().startswith("error")]
    if done.returncode != 0 and not problems:
        problems.append(f"logrotate -d exited with {done.returncode}: {output.strip()[-300:]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="validate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the logrotate config to check")
    parser.add_argument("--dry-run", action="store_true", help="validate only (always: nothing is rotated)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"{args.config}: no such file", file=sys.stderr)
        return 1
    problems = config_problems(config_parse(args.config.read_text())) + logrotate_problems(args.config)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{args.config}: {len(problems)} problems")
        return 1
    print(f"{args.config}: valid (daily, {RETENTION_DAYS} rotations, compressed, 0640; logrotate -d accepts it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
