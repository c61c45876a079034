"""Benchmarks (``make bench``): figures from one run, printed as JSON; the last line on stdout is
the summary other tools read. Run through ``python -m ops.devstack bench`` (PostgreSQL or SQLite,
Redis), against real worker processes and ComfyUI simulators on real sockets (ops/livestack.py).

Targets (checked here and reported, never asserted in the tests): keep-fed ratio <= 1.03,
detection p95 <= 50 ms, capacity >= 50 pages/s on 2 cores, recovery <= 15 s, RSS growth <= 10%.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from ops import livestack
from renders.reports import percentile

RENDER_S = 1.0  # the fixed render time of the keep-fed and baseline runs
PAGES = 60


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _group_pids(leader: int) -> list[int]:
    """Every process in the worker's process group (its main process and pool children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == leader:  # field 5 of stat: the process group
                pids.append(int(entry.name))
    return pids


def _cpu_seconds(leader: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _group_pids(leader):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def _rss_mb(leader: int) -> float:
    total_kb = 0
    for pid in _group_pids(leader):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def _render(pages: int, title: str, timeout: float, size: int = 256) -> tuple[float, Any]:
    started = time.monotonic()
    book = livestack.create_book(pages, title=title, size=size)
    if not livestack.wait_settled(book, timeout=timeout):
        raise SystemExit(f"bench: {title!r} did not finish within {timeout:.0f} s")
    return time.monotonic() - started, book


def keep_fed(instances: int, workdir: Path) -> dict[str, Any]:
    """Makespan of 60 pages at a fixed render time against the ideal (sum of renders / instances)."""
    from renders.models import RenderAttempt

    livestack.reset_database()
    with livestack.simulators(
        instances, workdir=workdir / f"kf{instances}", args=["--render-time", str(RENDER_S)]
    ) as sims:
        env = livestack.use_instances([s.url for s in sims])
        worker = livestack.start_worker(env=env, log=workdir / f"worker-kf{instances}.log", concurrency=2 * instances)
        try:
            makespan, book = _render(PAGES, f"keep-fed x{instances}", timeout=PAGES * RENDER_S * 4)
        finally:
            worker.stop()
    runs = list(RenderAttempt.objects.filter(page__book=book, outcome="success"))
    # What the simulator really spent per prompt: its render time plus its own pixel work.
    executed = sum(
        (a.comfy_finished_at - a.started_at).total_seconds() for a in runs if a.comfy_finished_at and a.started_at
    )
    detection = [
        (a.finished_at - a.comfy_finished_at).total_seconds() * 1000
        for a in runs
        if a.finished_at and a.comfy_finished_at
    ]
    # How long each GPU sat idle between one prompt ending and the next starting on it.
    gaps: list[float] = []
    for url in {a.instance_url for a in runs}:
        spans = sorted(
            (a.started_at, a.comfy_finished_at)
            for a in runs
            if a.instance_url == url and a.started_at and a.comfy_finished_at
        )
        gaps += [max(0.0, (start - end).total_seconds()) * 1000 for (_, end), (start, _) in itertools.pairwise(spans)]
    return {
        "makespan_s": round(makespan, 2),
        "ideal_s": round(executed / instances, 2),
        "gpu_idle_between_prompts_ms": {
            "mean": round(sum(gaps) / len(gaps), 1) if gaps else None,
            "max": round(max(gaps), 1) if gaps else None,
        },
        "ratio": round(makespan / (executed / instances), 3),
        "ratio_vs_configured_render_time": round(makespan / (PAGES * RENDER_S / instances), 3),
        "detection_ms": detection,
    }


# Tiny pages: the simulator's PNG encoding of a 256x256 page (about 15 ms of its CPU) is render
# work, which "instant renders" leaves out.
CAPACITY_PAGE_SIZE = 32
# Runs of the capacity measurement; the median is reported (one run varies by about ±10% here).
CAPACITY_RUNS = 3


def capacity(workdir: Path, pages: int = 400) -> dict[str, Any]:
    """Pages per second with instant renders on 4 instances, and worker CPU per page: the median
    of CAPACITY_RUNS runs, each on a fresh database, simulators and worker."""
    runs = [_capacity_once(workdir / f"cap{n}", pages) for n in range(CAPACITY_RUNS)]
    median = sorted(runs, key=lambda run: run["pages_per_s"])[len(runs) // 2]
    return {**median, "runs_pages_per_s": [run["pages_per_s"] for run in runs]}


def _capacity_once(workdir: Path, pages: int) -> dict[str, float]:
    livestack.reset_database()
    with livestack.simulators(4, workdir=workdir, args=["--render-time", "0"]) as sims:
        env = livestack.use_instances([s.url for s in sims])
        worker = livestack.start_worker(env=env, log=workdir / "worker.log", concurrency=8)
        try:
            cpu_before = _cpu_seconds(worker.pid)
            elapsed, _ = _render(pages, "capacity", timeout=600, size=CAPACITY_PAGE_SIZE)
            cpu = _cpu_seconds(worker.pid) - cpu_before
        finally:
            worker.stop()
    return {
        "pages": pages,
        "seconds": round(elapsed, 2),
        "pages_per_s": round(pages / elapsed, 2),
        "cpu_ms_per_page": round(cpu * 1000 / pages, 1),
    }


def recovery(workdir: Path) -> float:
    """Seconds from a worker SIGKILL mid-render to its page rendering again, in the shipped topology
    (render workers, a maintenance worker, beat) with the default settings: COMFY_LEASE_SEC and the
    sweep interval decide it."""
    from books.models import BookPage

    livestack.reset_database()
    with livestack.simulators(1, workdir=workdir / "rec", args=["--render-time", "20"]) as sims:
        env = livestack.use_instances([sims[0].url])
        maintenance = livestack.start_maintenance_worker(env=env, log=workdir / "maintenance-rec.log")
        beat = livestack.start_beat(env=env, log=workdir / "beat-rec.log", sweep_interval=3)
        doomed = livestack.start_worker(env=env, log=workdir / "worker-rec-1.log", concurrency=2)
        successor = None
        try:
            book = livestack.create_book(1, title="recovery")
            page = book.pages.get()
            deadline = time.monotonic() + 30
            while not (sims[0].stats()["submitted"] and BookPage.objects.get(pk=page.pk).status == "rendering"):
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the recovery page never started rendering")
                time.sleep(0.05)
            doomed.kill()
            killed = time.monotonic()
            successor = livestack.start_worker(env=env, log=workdir / "worker-rec-2.log", concurrency=2, wait=False)
            while True:
                current = BookPage.objects.get(pk=page.pk)
                if current.status == "rendering" and current.job_metadata.get("resumes"):
                    return round(time.monotonic() - killed, 2)
                if time.monotonic() - killed > 60:
                    raise SystemExit("bench: the killed worker's page was not resumed within 60 s")
                time.sleep(0.05)
        finally:
            for process in (successor, doomed, beat, maintenance):
                if process is not None:
                    process.stop()


def memory(workdir: Path) -> dict[str, float]:
    """Worker RSS after 200 pages and after 2,000 (instant renders, one worker)."""
    livestack.reset_database()
    with livestack.simulators(2, workdir=workdir / "mem", args=["--render-time", "0"]) as sims:
        env = livestack.use_instances([s.url for s in sims])
        worker = livestack.start_worker(env=env, log=workdir / "worker-mem.log", concurrency=4)
        try:
            _render(200, "memory 200", timeout=600)
            after_200 = _rss_mb(worker.pid)
            for batch in range(9):
                _render(200, f"memory batch {batch}", timeout=600)
            after_2000 = _rss_mb(worker.pid)
        finally:
            worker.stop()
    return {
        "rss_mb_after_200": round(after_200, 1),
        "rss_mb_after_2000": round(after_2000, 1),
        "growth": round(after_2000 / after_200 - 1, 4),
    }


def naive_baseline(workdir: Path) -> float:
    """The loop seed 004 §1.3 sketches: one page at a time, submit, poll /history every 2 s,
    fetch the image. Same pages, same render time, one ComfyUI."""
    from renders.workflows import workflow_get

    workflow = workflow_get("model-free")
    with livestack.simulators(1, workdir=workdir / "naive", args=["--render-time", str(RENDER_S)]) as sims:
        server = sims[0].url
        started = time.monotonic()
        for n in range(1, PAGES + 1):
            graph = workflow.fill(
                prompt=f"page {n}",
                negative_prompt="",
                seed=n,
                filename_prefix=f"naive/p{n}-{uuid.uuid4().hex[:6]}",
                width=256,
                height=256,
            )
            prompt_id = requests.post(f"{server}/prompt", json={"prompt": graph}, timeout=300).json()["prompt_id"]
            while True:
                time.sleep(2)
                entry = requests.get(f"{server}/history/{prompt_id}", timeout=30).json().get(prompt_id)
                if entry and entry["status"].get("completed"):
                    break
            image = next(iter(entry["outputs"]["6"]["images"]))
            requests.get(f"{server}/view", params=image, timeout=30).raise_for_status()
        return round(time.monotonic() - started, 2)


LIVE_PAGES = 500


def live_updates(pages: int = LIVE_PAGES, reps: int = 5) -> dict[str, Any]:
    """The status page of a 500-page book and its live update: bytes and server time (the median
    of ``reps`` requests through Django's test client, in this process) of the full page, of a
    poll when nothing changed and of a poll after one page changed. No worker runs: the pages stay
    as the bench puts them."""
    import re
    import statistics

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from books.models import BookPage
    from books.services import PageSpec, book_create

    livestack.reset_database()
    owner = User.objects.create_user("bench-reader", password="unused")
    book = book_create(
        owner=owner, title="Bench", workflow="model-free", pages=[PageSpec(f"Page {n}") for n in range(pages)]
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(owner)
    # A change is sent on the polls that come within this long of it (books.status.LIVE_OVERLAP;
    # 0 on code that has no cursor): wait it out so each poll measures only its own change.
    try:
        from books.status import LIVE_OVERLAP

        settle = LIVE_OVERLAP.total_seconds() + 1
    except ImportError:
        settle = 0.0
    time.sleep(settle)

    def get(path: str) -> tuple[int, float, int, str]:
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(path)
            took = time.perf_counter() - started
        assert response.status_code == 200, (path, response.status_code)
        html = response.content.decode()
        return len(response.content), took * 1000, len(queries), html

    def cursor(html: str) -> str:
        found = re.search(r'data-cursor="([^"]+)"', html)
        return f"?since={found.group(1)}" if found else ""

    def measure(runs: list[tuple[int, float, int, str]]) -> dict[str, float]:
        return {
            "bytes": statistics.median(run[0] for run in runs),
            "server_ms": round(statistics.median(run[1] for run in runs), 1),
            "statements": statistics.median(run[2] for run in runs),
            "cards": statistics.median(run[3].count('<li class="page-card') for run in runs),
        }

    full = [get(f"/books/{book.pk}/") for _ in range(reps)]
    since = cursor(full[-1][3])
    quiet = []
    for _ in range(reps):
        quiet.append(get(f"/books/{book.pk}/pages{since}"))
        since = cursor(quiet[-1][3]) or since
    changed = []
    for number in range(1, reps + 1):
        # The tab polled since the last change went by (a change is resent until then).
        time.sleep(settle)
        since = cursor(get(f"/books/{book.pk}/pages{since}")[3]) or since
        BookPage.objects.filter(book=book, number=number * 7).update(status=BookPage.Status.DONE)
        changed.append(get(f"/books/{book.pk}/pages{since}"))
        since = cursor(changed[-1][3]) or since
    livestack.reset_database()
    return {
        "pages": pages,
        "status_page": measure(full),
        "poll_nothing_changed": measure(quiet),
        "poll_one_page_changed": measure(changed),
    }


def main() -> int:
    livestack.setup_django()
    wanted = set(sys.argv[1:]) or {"keep_fed", "capacity", "recovery", "memory", "naive", "live"}
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bookrender-bench-") as tmp:
        workdir = Path(tmp)
        if "keep_fed" in wanted:
            for n in (1, 3):
                _log(f"keep-fed, {n} instance(s)")
                figures[f"keep_fed_{n}"] = keep_fed(n, workdir)
        if "capacity" in wanted:
            _log("capacity, instant renders on 4 instances")
            figures["capacity"] = capacity(workdir)
        if "recovery" in wanted:
            _log("recovery after a worker SIGKILL")
            figures["recovery_s"] = recovery(workdir)
        if "memory" in wanted:
            _log("worker memory over 2,000 pages")
            figures["memory"] = memory(workdir)
        if "naive" in wanted:
            _log("the naive baseline")
            figures["naive_makespan_s"] = naive_baseline(workdir)
        if "live" in wanted:
            _log(f"the status page and its live update, {LIVE_PAGES} pages")
            figures["live"] = live_updates()
    detection = figures.get("keep_fed_1", {}).get("detection_ms", []) + figures.get("keep_fed_3", {}).get(
        "detection_ms", []
    )
    for key in ("keep_fed_1", "keep_fed_3"):
        if key in figures:
            figures[key].pop("detection_ms")
    print(json.dumps(figures, indent=2))
    bookrender_makespan = figures.get("keep_fed_1", {}).get("makespan_s")
    naive = figures.get("naive_makespan_s")
    summary = {
        "keep_fed_ratio": {n: figures[f"keep_fed_{n}"]["ratio"] for n in ("1", "3") if f"keep_fed_{n}" in figures},
        "detection_ms": {q: round(percentile(detection, n) or 0.0, 1) for q, n in (("p50", 50), ("p95", 95))}
        if detection
        else None,
        "capacity_pages_per_s": figures.get("capacity", {}).get("pages_per_s"),
        "cpu_ms_per_page": figures.get("capacity", {}).get("cpu_ms_per_page"),
        "recovery_s": figures.get("recovery_s"),
        "rss_growth": figures.get("memory", {}).get("growth"),
        "naive_makespan_s": naive,
        # The same 60 pages on the same single ComfyUI as the naive loop.
        "bookrender_makespan_s": bookrender_makespan,
        "naive_speedup": round(naive / bookrender_makespan, 2) if naive and bookrender_makespan else None,
        "live_poll_bytes": {
            key: figures["live"][key]["bytes"] for key in ("poll_nothing_changed", "poll_one_page_changed")
        }
        if "live" in figures
        else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
