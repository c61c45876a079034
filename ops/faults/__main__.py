"""``python -m ops.faults [SCENARIO ...]``: run the fault scenarios against a live system.

Run it through ``make faults`` (``python -m ops.devstack faults``), which provides PostgreSQL
and Redis. Every scenario starts from an empty database (the database is flushed: its name must
end in ``_faults`` or ``_test``), starts its own simulators, workers and beat, injects its fault
and checks the outcome. Prints one line per scenario with its recovery time, writes
``faults.json`` and the logs under ``--out`` (default var/faults/), and ends with the line
``faults: N/M scenarios passed``; the exit status is 1 when any scenario failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django

from ops import livestack

DEFAULT_OUT = livestack.ROOT / "var" / "faults"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.faults", description=__doc__.split("\n\n")[1])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="run only these (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where faults.json and the logs go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out.resolve()
    media = out / "media"
    # This process and every worker it starts store page images here.
    os.environ["BOOKRENDER_MEDIA_ROOT"] = str(media)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()

    from ops.faults.scenarios import SCENARIOS, Context, Outcome
    from ops.faults.system import SAFE_DATABASE_SUFFIXES, database_is_disposable

    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:15} {scenario.title}: {scenario.expected}")
        return 0
    unknown = sorted(set(args.scenarios) - {s.name for s in SCENARIOS})
    if unknown:
        print(f"faults: unknown scenario {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    safe, name = database_is_disposable()
    if not safe:
        print(
            f"faults: refusing to flush database {name!r}: use one whose name ends in "
            f"{' or '.join(SAFE_DATABASE_SUFFIXES)} (make faults uses bookrender_faults)",
            file=sys.stderr,
        )
        return 2
    livestack.setup_django()  # migrates
    logging.getLogger().setLevel(logging.WARNING)  # stdout is the report

    from django.db import connection

    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios]
    shutil.rmtree(out / "logs", ignore_errors=True)
    ctx = Context(out_dir=out, media_root=media)
    print(f"faults: {len(chosen)} scenarios, logs in {out / 'logs'}", flush=True)
    outcomes: list[Outcome] = []
    skipped: list[str] = []
    started = time.monotonic()
    for scenario in chosen:
        if scenario.name == "postgres-drop" and connection.vendor != "postgresql":
            skipped.append(f"{scenario.name} (needs PostgreSQL)")
            print(f"SKIP {scenario.name:14} needs PostgreSQL, this run uses {connection.vendor}", flush=True)
            continue
        livestack.reset_database()
        shutil.rmtree(media / "pages", ignore_errors=True)
        began = time.monotonic()
        try:
            result = scenario.run(ctx)
        except Exception as exc:  # a scenario that breaks is a failed scenario, the others still run
            result = Outcome(scenario.name, False, None, "", problems=[f"{type(exc).__name__}: {exc}"])
            (ctx.workdir(scenario.name)).mkdir(parents=True, exist_ok=True)
            ctx.workdir(scenario.name).joinpath("traceback.txt").write_text(traceback.format_exc())
        result.seconds = round(time.monotonic() - began, 1)
        outcomes.append(result)
        print(line(scenario.title, result), flush=True)
        for problem in result.problems:
            print(f"     - {problem}", flush=True)

    passed = sum(1 for o in outcomes if o.passed)
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "passed": passed,
        "run": len(outcomes),
        "skipped": skipped,
        "settings": _settings(),
        "scenarios": [asdict(o) for o in outcomes],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {out / 'faults.json'} ({report['seconds']:.0f} s)")
    tail = f", {len(skipped)} skipped: {', '.join(skipped)}" if skipped else ""
    print(f"faults: {passed}/{len(outcomes)} scenarios passed{tail}")
    return 0 if passed == len(outcomes) else 1


def line(title: str, result: Any) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    recovery = "-" if result.recovery_s is None else f"{result.recovery_s:.1f} s"
    return f"{verdict} {result.name:14} recovery {recovery:>7}  ({result.recovery_what})  [{result.seconds:.0f} s]"


def _settings() -> dict[str, Any]:
    from ops.faults.system import SCENARIO_ENV, SWEEP_INTERVAL_SEC

    return {**SCENARIO_ENV, "BOOKRENDER_SWEEP_INTERVAL_SEC": SWEEP_INTERVAL_SEC, "cpus": os.cpu_count()}


if __name__ == "__main__":
    sys.exit(main())
