"""The load tools: run_load_test.py against one ComfyUI (seed 004 §2.2), and the end-to-end load
test with its SLA verdict. Real simulators on real sockets; the end-to-end run uses real workers,
beat and the web app on the test database."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from django.conf import global_settings

from comfysim.testing import image_graph
from ops.loadtest import e2e, run_load_test
from ops.loadtest.report import sla_rows, sla_table
from ops.loadtest.stats import distribution, percentile
from tests.conftest import database_url

ROOT = Path(__file__).resolve().parents[2]
MODEL_FREE = ROOT / "renders" / "workflow_templates" / "model-free.json"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_it_counts_a_run_with_one_oom_and_names_its_kind(simulator, tmp_path):
    simulator.set_faults(render_time="0.1", oom={"count": 1})
    out = tmp_path / "load.json"

    code = run_load_test.main(
        ["--server", simulator.url, "--workflow", str(MODEL_FREE), "--jobs", "6", "--concurrency", "2",
         "--timeout", "60", "--output", str(out), "--width", "64", "--height", "64"]
    )  # fmt: skip

    assert code == 0
    report = load(out)
    summary = report["summary"]
    assert (summary["jobs"], summary["succeeded"], summary["failed"]) == (6, 5, 1)
    assert summary["success_rate"] == pytest.approx(5 / 6, abs=1e-3)
    assert summary["errors_by_kind"] == {"oom": 1}
    assert summary["latency_s"]["count"] == 5
    assert 0 < summary["latency_s"]["p50"] <= summary["latency_s"]["p95"] <= summary["latency_s"]["p99"]
    assert summary["throughput_per_min"] > 0
    [failed] = [job for job in report["jobs"] if job["status"] == "failed"]
    assert failed["error_kind"] == "oom" and "out of GPU memory" in failed["error"]
    assert report["workflow"]["format"] == "bookrender-template"
    assert simulator.stats()["submitted"] == 6


def test_it_says_why_there_are_no_gpu_snapshots(simulator, tmp_path):
    out = tmp_path / "load.json"
    run_load_test.main(["--server", simulator.url, "--workflow", str(MODEL_FREE), "--jobs", "1", "--output", str(out),
                        "--width", "64", "--height", "64"])  # fmt: skip

    gpu = load(out)["gpu"]
    assert gpu["available"] is False and gpu["snapshots"] == []
    assert "pass --gpu-index" in gpu["reason"]  # the simulator's port is not 8188 + a GPU index
    assert load(out)["server"]["before"]["devices"]  # ComfyUI's own VRAM reading is there anyway


def test_it_runs_as_a_script_and_makes_each_job_of_a_plain_graph_unique(simulator, tmp_path):
    simulator.set_faults(render_time="0.05")
    graph = tmp_path / "book_medium.json"
    graph.write_text(json.dumps(image_graph("book/page")))
    out = tmp_path / "results" / "load.json"

    result = subprocess.run(
        [sys.executable, str(ROOT / "ops/loadtest/run_load_test.py"), "--server", simulator.url,
         "--workflow", str(graph), "--jobs", "4", "--concurrency", "2", "--timeout", "60", "--output", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["succeeded"] == 4  # stdout is the summary, as `jq .summary` shows it
    report = load(out)
    assert report["workflow"]["format"] == "api-graph"
    assert report["workflow"]["made_unique_by"] == ["filename_prefix"]
    saved = sorted(p.name for p in (simulator.output_dir / "book").glob("page_*.png"))
    assert len(saved) == 4 and len({name.rsplit("_", 2)[0] for name in saved}) == 4  # four prefixes


def test_a_job_past_its_timeout_is_cancelled_on_the_server(simulator, tmp_path):
    simulator.set_faults(render_time="0.05", hang={"count": 1})
    out = tmp_path / "load.json"

    run_load_test.main(["--server", simulator.url, "--workflow", str(MODEL_FREE), "--jobs", "2", "--concurrency", "1",
                        "--timeout", "2", "--output", str(out), "--width", "64", "--height", "64",
                        "--poll-interval", "0.2"])  # fmt: skip

    report = load(out)
    assert report["summary"]["errors_by_kind"] == {"timeout": 1}
    [timed_out] = [job for job in report["jobs"] if job["error_kind"] == "timeout"]
    assert timed_out["cancelled"] is True
    assert simulator.stats()["interrupted"] == 1
    assert report["summary"]["succeeded"] == 1  # the job after it ran once the GPU was free


def test_it_refuses_a_ui_format_workflow_and_a_server_that_does_not_answer(simulator, tmp_path, capsys):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))

    assert run_load_test.main(["--server", simulator.url, "--workflow", str(ui), "--output", str(tmp_path / "o")]) == 2
    assert "Save (API Format)" in capsys.readouterr().err
    assert run_load_test.main(["--server", "http://127.0.0.1:9", "--workflow", str(MODEL_FREE),
                               "--output", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "does not answer" in capsys.readouterr().err


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 95) is None
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(range(1, 101), 95) == pytest.approx(95.05)
    assert distribution([3, 1, 2])["max"] == 3 and distribution([3, 1, 2])["count"] == 3


def summary(**overrides: Any) -> dict[str, Any]:
    base = {
        "throughput_per_min": 90.0,
        "throughput_overall_per_min": 80.0,
        "latency_s": {"p50": 10.0, "p95": 30.0, "p99": 40.0, "max": 44.0},
        "pages": {"failed_rate": 0.0, "max_in_flight": 60},
        "books": {"max_in_flight": 5},
        "attempts": {"failed_rate": 0.03, "errors_by_kind": {"oom": 3}},
        "recovery": {"measured": True, "kill_to_refill_s": 9.0, "restart_to_refill_s": 3.0, "down_s": 5.0,
                     "lost_prompts": 1, "lost_pages_rendering_again_after_s": 20.0},
    }  # fmt: skip
    base.update(overrides)
    return base


def test_the_sla_verdict_holds_concurrency_to_the_other_targets():
    args = Namespace(books=5, pages=12)
    rows = {row["metric"]: row for row in sla_rows(summary(), args)}
    assert all(row["met"] for row in rows.values())

    late = summary(latency_s={"p50": 30, "p95": 50.0, "p99": 60, "max": 70})
    slow = {row["metric"]: row for row in sla_rows(late, args)}
    assert not slow["Latency p95"]["met"]
    assert not slow["Concurrency"]["met"]  # 5 books in flight, but not within the SLA
    assert "FAIL" in sla_table(list(slow.values()))

    unmeasured = {row["metric"]: row for row in sla_rows(summary(recovery={"measured": False}), args)}
    assert not unmeasured["Recovery time"]["met"] and unmeasured["Recovery time"]["measured"] == "not measured"


@pytest.mark.django_db(transaction=True)
def test_the_end_to_end_load_test_runs_books_through_the_web_app_and_writes_its_report(
    tmp_path, monkeypatch, broker, capsys, settings
):
    # The web app signs the load test's user in with the real hashers, not the tests' fast one. (Set
    # through the fixture, which also undoes the COMFYUI_URLS the run sets on django.conf.settings.)
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    monkeypatch.setenv("DATABASE_URL", database_url())  # the workers and the web app use the test database
    monkeypatch.setenv("BOOKRENDER_MEDIA_ROOT", str(tmp_path / "media"))
    monkeypatch.setenv("COMFYUI_URLS", settings.COMFYUI_URLS[0])
    monkeypatch.setattr("ops.faults.system.database_is_disposable", lambda: (True, "test"))
    code = e2e.main(["--books", "2", "--pages", "3", "--duration", "4", "--instances", "1",
                     "--render-time", "0.2", "--faults", "", "--kill-instance-at", "0",
                     "--drain-timeout", "60", "--out", str(tmp_path / "out")])  # fmt: skip

    printed = capsys.readouterr().out
    report = load(tmp_path / "out" / "loadtest.json")
    assert report["summary"]["pages"]["total"] >= 6 and report["summary"]["pages"]["not_settled"] == 0
    assert report["integrity_problems"] == [] and report["load_errors"] == []
    assert report["summary"]["books"]["max_in_flight"] == 2
    assert {row["metric"] for row in report["sla"]} == {
        "Throughput", "Concurrency", "Latency p95", "Error budget", "Recovery time"
    }  # fmt: skip
    assert code == 1  # 2 books in flight and no instance killed: two targets cannot be met
    assert "Latency p95" in printed and "loadtest: SLA breached" in printed
    for chart in ("latency.png", "queue.png", "throughput.png"):
        assert (tmp_path / "out" / chart).stat().st_size > 1000
    assert 'src="latency.png"' in (tmp_path / "out" / "index.html").read_text()
