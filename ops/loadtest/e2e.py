"""``python -m ops.loadtest.e2e``: end-to-end load against the whole system (``make loadtest``).

Books go in through the web app (sign in, New book with a JSON upload), wait in Redis, are
rendered by real Celery workers on a fleet of ComfyUI simulators with the render-time
distribution and fault rates given here, and are followed through ``GET /api/books/{id}``. The
load is closed-loop: ``--books`` books are kept in flight (a new one is created as soon as one
settles) for ``--duration`` seconds, then the last ones are waited for. One instance is killed
mid-run and restarted, to measure how long a failed slot takes to refill.

Writes ``loadtest.json`` and ``index.html`` with PNG charts (latency over time, queue depth,
throughput) under ``--out`` (default var/loadtest/), and prints the SLA table of seed 004 §1.2.
Exit status: 0 when every SLA target is met, 1 when one is breached, 2 when a page was lost or
stored twice, or the run could not be made. The database is flushed first: its name must end in
``_loadtest`` (``make loadtest`` uses bookrender_loadtest).

bookrender's own settings (COMFY_RETRY_BACKOFF_SEC, COMFY_LEASE_SEC, ...) come from the
environment as usual; the defaults are production's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django

from ops import livestack, topology
from ops.devstack import free_port, wait_http
from ops.loadtest.stats import distribution

DEFAULT_OUT = livestack.ROOT / "var" / "loadtest"
USERNAME, PASSWORD = "loadtest", "loadtest-password"


def parse_faults(text: str) -> dict[str, dict[str, float]]:
    """``"oom=0.01,error=0.02"`` -> the simulator's per-prompt fault rates."""
    from comfysim.faults import PROMPT_FAULTS

    faults: dict[str, dict[str, float]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, rate = item.partition("=")
        if name not in PROMPT_FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {', '.join(PROMPT_FAULTS)}")
        try:
            value = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {rate!r} is not a rate between 0 and 1") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{name}: {value} is not a rate between 0 and 1")
        faults[name] = {"rate": value}
    return faults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.loadtest.e2e", description=__doc__.split("\n\n")[1].replace("\n", " ")
    )
    parser.add_argument("--books", type=int, default=5, help="books kept in flight at once (default 5)")
    parser.add_argument("--pages", type=int, default=12, help="pages per book (default 12)")
    parser.add_argument("--duration", type=float, default=90, help="seconds of load before draining (default 90)")
    parser.add_argument("--instances", type=int, default=4, help="ComfyUI simulators, one per GPU (default 4)")
    parser.add_argument(
        "--render-time",
        default="lognormal:0.0,0.3",
        help='seconds per render: "2", "uniform:a,b", "normal:mu,sd" or "lognormal:mu,sigma" '
        "(default lognormal:0.0,0.3, median 1 s)",
    )
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default="oom=0.01,error=0.01",
        help="fault rates per render, e.g. oom=0.01,error=0.01,validation=0.005,ws_drop=0.02 "
        "(default oom=0.01,error=0.01)",
    )
    parser.add_argument("--kill-instance-at", type=float, default=30, help="seconds in; 0: kill none (default 30)")
    parser.add_argument("--instance-down", type=float, default=5, help="seconds the killed instance stays down")
    parser.add_argument("--size", type=int, default=256, help="page width and height in pixels (default 256)")
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds to wait for the last books")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulators' fault and render-time draws")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes (default var/loadtest)")
    return parser


@dataclass
class BookRun:
    slot: int
    book_id: int
    requested_at: float  # time.time() just before POST /books/new
    created_at: float
    settled_at: float | None = None
    pages: int = 0


class Load:
    """``books`` threads, each a person who creates a book, follows it through the API until it
    settles, and creates the next, until ``stop_at`` (each creates at least one)."""

    def __init__(self, *, base_url: str, books: int, pages: list[dict[str, Any]], stop_at: float, give_up_at: float):
        self.base_url, self.slots, self.page_specs = base_url, books, pages
        self.stop_at, self.give_up_at = stop_at, give_up_at
        self.runs: list[BookRun] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._slot, args=(n,), daemon=True) for n in range(books)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for run in self.runs if run.settled_at is None)

    def runs_of(self, slot: int) -> list[BookRun]:
        with self._lock:
            return [run for run in self.runs if run.slot == slot]

    def _slot(self, slot: int) -> None:
        from ops.loadtest.web import WebClient, WebError

        client = WebClient(self.base_url)
        try:
            client.sign_in(USERNAME, PASSWORD)
            # Every slot creates its first book, however long signing in took on a loaded machine;
            # further books only while the load window lasts.
            while not self.runs_of(slot) or time.time() < self.stop_at:
                requested = time.time()
                book_id = client.create_book(title=f"load {slot}-{len(self.runs)}", pages=self.page_specs)
                run = BookRun(slot, book_id, requested, time.time(), pages=len(self.page_specs))
                with self._lock:
                    self.runs.append(run)
                while time.time() < self.give_up_at:
                    counts = client.book(book_id)["counts"]
                    if counts["queued"] + counts["rendering"] == 0:
                        run.settled_at = time.time()
                        break
                    time.sleep(0.5)
                else:
                    return
        except (WebError, OSError, ValueError) as exc:
            with self._lock:
                self.errors.append(f"slot {slot}: {type(exc).__name__}: {exc}")

    def join(self) -> None:
        for thread in self._threads:
            thread.join(max(0.0, self.give_up_at - time.time()) + 5)


def queue_length() -> int | None:
    from renders.services import broker_queue_length

    try:
        return broker_queue_length()
    except Exception:  # Redis unreachable: a gap in the chart, not a failed run
        return None


def sample(started: float, load: Load) -> dict[str, Any]:
    from django.db.models import Count

    from books.models import BookPage

    counts = dict(BookPage.objects.values_list("status").annotate(n=Count("pk")))
    return {
        "t": round(time.time() - started, 2),
        "queued": counts.get("queued", 0),
        "rendering": counts.get("rendering", 0),
        "done": counts.get("done", 0),
        "failed": counts.get("failed", 0),
        "redis_messages": queue_length(),
        "books_in_flight": load.in_flight(),
    }


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Start the system, drive the load, and return everything measured."""
    from django.contrib.auth.models import User

    from ops.faults.audit import SubmissionLedger, audit_books

    workdir = out / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    sim_args = ["--render-time", args.render_time, "--faults", json.dumps(args.faults)]
    events: dict[str, float] = {}
    with ExitStack() as stack:
        sims = stack.enter_context(livestack.simulators(args.instances, workdir=workdir, args=sim_args))
        # A seed of its own for each instance: with one seed they would all fail the same prompts.
        for n, sim in enumerate(sims):
            sim.set_faults(seed=args.seed * 1000 + n)
        env = livestack.use_instances([s.url for s in sims])
        maintenance = livestack.start_maintenance_worker(env=env, log=workdir / "maintenance.log")
        stack.callback(maintenance.stop)
        worker = livestack.start_worker(env=env, log=workdir / "worker.log", concurrency=2 * args.instances)
        stack.callback(worker.stop)
        beat = livestack.start_beat(env=env, log=workdir / "beat.log", sweep_interval=3.0)
        stack.callback(beat.stop)
        port = free_port()
        # The unit's command line; the pool through GUNICORN_CMD_ARGS, as the env file sets it.
        web = livestack.Process(
            "web",
            topology.argv("web", bind=f"127.0.0.1:{port}", log_level="INFO"),
            {**env, "GUNICORN_CMD_ARGS": "--workers 2 --threads 4 --worker-class gthread"},
            workdir / "web.log",
        )
        stack.callback(web.stop)
        base_url = f"http://127.0.0.1:{port}"
        if not wait_http(base_url + "/accounts/login/", 30):
            raise RuntimeError(f"the web app did not start; see {workdir / 'web.log'}")
        User.objects.create_user(USERNAME, password=PASSWORD)
        ledger = SubmissionLedger(sims).start()
        stack.callback(ledger.stop)

        pages = [
            {"prompt": f"load test page {n}", "width": args.size, "height": args.size} for n in range(1, args.pages + 1)
        ]
        started = time.time()
        load = Load(
            base_url=base_url,
            books=args.books,
            pages=pages,
            stop_at=started + args.duration,
            give_up_at=started + args.duration + args.drain_timeout,
        )
        load.start()
        samples: list[dict[str, Any]] = []
        victim = sims[0]
        while load.running():
            now = time.time() - started
            if args.kill_instance_at and "killed" not in events and now >= args.kill_instance_at:
                ledger.snapshot()
                events["killed"] = time.time()
                victim.kill()
            if (
                "killed" in events
                and "restarted" not in events
                and time.time() >= events["killed"] + args.instance_down
            ):
                victim.restart()
                events["restarted"] = time.time()
                victim.set_faults(seed=args.seed * 1000 + 999)
            samples.append(sample(started, load))
            time.sleep(1.0)
        load.join()
        ended = time.time()
        ledger.stop()
        problems = audit_books(
            book_ids=[r.book_id for r in load.runs],
            media_root=Path(os.environ["BOOKRENDER_MEDIA_ROOT"]),
            submissions=ledger.submissions(),
            expected_pages={r.book_id: r.pages for r in load.runs},
        )
        return {
            "started": started,
            "ended": ended,
            "urls": [s.url for s in sims],
            "victim": victim.url,
            "events": events,
            "runs": load.runs,
            "errors": load.errors,
            "samples": samples,
            "problems": problems,
            "submissions": sum(ledger.submissions().values()),
        }


def measure(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """The summary of a run: pages, latency, throughput, errors, recovery, utilisation."""
    from books.models import BookPage
    from renders.models import RenderAttempt

    runs: list[BookRun] = result["runs"]
    started, ended = result["started"], result["ended"]
    requested = {r.book_id: r.requested_at for r in runs}
    pages: list[dict[str, Any]] = [
        dict(row)
        for row in BookPage.objects.filter(book_id__in=requested).values(
            "book_id", "number", "status", "rendered_at", "attempt"
        )
    ]
    fields = ("page_id", "number", "outcome", "error", "instance_url", "created_at", "submitted_at", "started_at",
              "comfy_finished_at", "finished_at")  # fmt: skip
    attempts: list[dict[str, Any]] = [
        dict(row) for row in RenderAttempt.objects.filter(page__book_id__in=requested).values(*fields)
    ]
    done = [p for p in pages if p["status"] == "done" and p["rendered_at"]]
    page_points = sorted(
        (p["rendered_at"].timestamp() - started, p["rendered_at"].timestamp() - requested[p["book_id"]]) for p in done
    )
    latency = [lat for _, lat in page_points]
    load_window = args.duration
    done_in_window = sum(1 for t, _ in page_points if t <= load_window)
    execution = [
        (a["comfy_finished_at"] - a["started_at"]).total_seconds()
        for a in attempts
        if a["outcome"] == "success" and a["started_at"] and a["comfy_finished_at"]
    ]
    failed_attempts = [a for a in attempts if a["outcome"] == "failed"]
    kinds: dict[str, int] = {}
    for a in failed_attempts:
        kind = str((a["error"] or {}).get("kind", "unknown"))
        kinds[kind] = kinds.get(kind, 0) + 1
    failed_pages = sum(1 for p in pages if p["status"] == "failed")
    samples = result["samples"]
    recovery = recovery_figures(result, attempts)
    busy = sum(execution)
    return {
        "books": {
            "created": len(runs),
            "kept_in_flight": args.books,
            "max_in_flight": max((s["books_in_flight"] for s in samples), default=0),
            "settled": sum(1 for r in runs if r.settled_at),
        },
        "pages": {
            "total": len(pages),
            "done": len(done),
            "needs_attention": failed_pages,
            "not_settled": len(pages) - len(done) - failed_pages,
            "max_in_flight": max((s["queued"] + s["rendering"] for s in samples), default=0),
            "failed_rate": round(failed_pages / len(pages), 4) if pages else None,
        },
        "latency_s": distribution(latency),
        "execution_s": distribution(execution),
        "throughput_per_min": round(done_in_window / load_window * 60, 2) if load_window else None,
        "throughput_overall_per_min": round(len(done) / (ended - started) * 60, 2) if ended > started else None,
        "attempts": {
            "total": len(attempts),
            "failed": len(failed_attempts),
            "failed_rate": round(len(failed_attempts) / len(attempts), 4) if attempts else None,
            "errors_by_kind": dict(sorted(kinds.items(), key=lambda item: -item[1])),
            "submissions": result["submissions"],
        },
        "recovery": recovery,
        "fleet_utilisation": round(busy / (args.instances * (ended - started)), 3) if ended > started else None,
        "_page_points": page_points,
    }


def recovery_figures(result: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """How the killed instance's slots were refilled: from the kill to the first prompt submitted
    to it again (its down time included), and to every page it lost rendering again elsewhere or
    there."""
    events = result["events"]
    if "killed" not in events or "restarted" not in events:
        return {"measured": False}
    killed, restarted, victim = events["killed"], events["restarted"], result["victim"]
    refill = min(
        (
            a["submitted_at"].timestamp()
            for a in attempts
            if a["instance_url"] == victim and a["submitted_at"] and a["submitted_at"].timestamp() > restarted
        ),
        default=None,
    )
    lost = [
        a
        for a in attempts
        if a["instance_url"] == victim
        and a["outcome"] == "failed"
        and a["finished_at"]
        and a["finished_at"].timestamp() >= killed
        and (a["error"] or {}).get("kind") == "unavailable"
    ]
    back = []
    for a in lost:
        later = [
            b["created_at"].timestamp() for b in attempts if b["page_id"] == a["page_id"] and b["number"] > a["number"]
        ]
        if later:
            back.append(min(later) - killed)
    return {
        "measured": True,
        "instance": victim,
        "killed_at_s": round(killed - result["started"], 2),
        "down_s": round(restarted - killed, 2),
        "kill_to_refill_s": round(refill - killed, 2) if refill else None,
        "restart_to_refill_s": round(refill - restarted, 2) if refill else None,
        "lost_prompts": len(lost),
        "lost_pages_rendering_again_after_s": round(max(back), 2) if back else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse runs parse_faults on the default text too
    if min(args.books, args.pages, args.instances) < 1 or args.duration <= 0:
        parser.error("--books, --pages and --instances must be at least 1, --duration positive")
    out: Path = args.out.resolve()
    os.environ["BOOKRENDER_MEDIA_ROOT"] = str(out / "media")
    # One user keeps books in flight for the whole run: far more than a person's hourly limit.
    os.environ["BOOKRENDER_NEW_BOOKS_PER_HOUR"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()

    from ops.faults.system import database_is_disposable
    from ops.loadtest.report import sla_rows, sla_table, write_report

    safe, name = database_is_disposable()
    if not safe:
        print(f"loadtest: refusing to flush database {name!r}: use one whose name ends in _loadtest", file=sys.stderr)
        return 2
    livestack.setup_django()  # migrates
    logging.getLogger().setLevel(logging.WARNING)  # stdout is the report
    livestack.reset_database()
    shutil.rmtree(out / "media" / "pages", ignore_errors=True)
    print(
        f"loadtest: {args.books} books x {args.pages} pages kept in flight for {args.duration:g} s on "
        f"{args.instances} simulated ComfyUI (render {args.render_time}, faults {args.faults or 'none'})",
        flush=True,
    )
    try:
        result = run(args, out)
    except RuntimeError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    summary = measure(args, result)
    rows = sla_rows(summary, args)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "environment": {
            "cpus": os.cpu_count(),
            "comfyui": "comfysim (the ComfyUI simulator): render times are simulated, not a GPU's",
            "bookrender_settings": {k: v for k, v in os.environ.items() if k.startswith(("COMFY_", "BOOKRENDER_"))},
        },
        "sla": rows,
        "summary": {k: v for k, v in summary.items() if not k.startswith("_")},
        "integrity_problems": result["problems"],
        "load_errors": result["errors"],
        "events": {k: round(v - result["started"], 2) for k, v in result["events"].items()},
        "books": [asdict(r) for r in result["runs"]],
        "samples": result["samples"],
    }
    write_report(report, summary["_page_points"], out)
    print(sla_table(rows))
    s = report["summary"]
    print(
        f"pages {s['pages']['done']} done, {s['pages']['needs_attention']} need attention, "
        f"{s['pages']['not_settled']} not settled; attempts {s['attempts']['total']}, "
        f"failed {s['attempts']['failed']} {s['attempts']['errors_by_kind']}; "
        f"fleet busy {s['fleet_utilisation']:.0%}"
    )
    for problem in result["problems"][:20] + result["errors"]:
        print(f"  ! {problem}")
    print(f"report: {out / 'index.html'} and {out / 'loadtest.json'}")
    met = sum(1 for row in rows if row["met"])
    if result["problems"] or result["errors"]:
        print(f"loadtest: {len(result['problems'])} integrity problems, {len(result['errors'])} load errors")
        return 2
    print(f"loadtest: SLA {'met' if met == len(rows) else 'breached'} ({met}/{len(rows)} targets)")
    return 0 if met == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
