"""The alert rules and the dashboard refer only to metrics bookrender really exports, and the
rules are valid Prometheus rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from renders.views import REGISTRY

MONITORING = Path(__file__).resolve().parent.parent.parent / "ops" / "monitoring"
# PromQL's own words, and Prometheus's built-in `up`.
PROMQL = {
    "sum",
    "by",
    "without",
    "rate",
    "increase",
    "changes",
    "histogram_quantile",
    "clamp_min",
    "avg",
    "max",
    "min",
    "count",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "humanizePercentage",
    "le",
    "up",
}


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL}


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.django_db
def test_every_alert_names_an_exported_metric():
    exported = exported_names() | {"up"}
    unknown = {name for expr in alert_exprs() for name in metric_names(expr)} - exported
    assert unknown == set()


@pytest.mark.django_db
def test_every_dashboard_panel_names_an_exported_metric():
    exported = exported_names()
    assert len(dashboard_exprs()) >= 15
    unknown = {name for expr in dashboard_exprs() for name in metric_names(expr)} - exported
    assert unknown == set()


def test_the_alerts_carry_the_seed_thresholds():
    exprs = "\n".join(alert_exprs())
    for threshold in ("< 3000", "< 1000", "> 85", "> 95", "> 10", "> 0.10", "> 120", "> 0.90", "< 0.10", "> 3"):
        assert threshold in exprs, threshold


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path):
    rules = subprocess.run(
        ["promtool", "check", "rules", str(MONITORING / "alerts.yml")], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 18 rules found" in rules.stdout
    # promtool reads the token file the scrape config names; the copy points at one here.
    (tmp_path / "metrics-token").write_text("t0ken\n")
    (tmp_path / "alerts.yml").write_text((MONITORING / "alerts.yml").read_text())
    text = (MONITORING / "prometheus.yml").read_text()
    assert "credentials_file: /etc/bookrender/metrics-token" in text
    copy = tmp_path / "prometheus.yml"
    copy.write_text(text.replace("/etc/bookrender/metrics-token", str(tmp_path / "metrics-token")))
    config = subprocess.run(["promtool", "check", "config", str(copy)], capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
