"""deploy/prometheus and deploy/grafana: valid for promtool, alerts that fire when they should, and a
dashboard (and alert rules) that only query metrics the metrics service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice_metrics.fleet_metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
HISTOGRAMS = ("sluice_task_run_seconds", "sluice_task_queue_wait_seconds", "sluice_rate_limit_wait_seconds")
SERIES = {
    *METRIC_NAMES,
    *(f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus`", pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False, cwd=PROM)


def sluice_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(re.findall(r"\bsluice_[a-z0-9_]+", without_strings))


def test_promtool_checks_config_and_rules() -> None:
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 6 rules found" in rules.stdout


def test_alerts_fire_when_they_should() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    names = {
        r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]
    }
    assert {
        "SluiceDeadLetterQueueGrowing",
        "SluiceNoWorkersAlive",
        "SluiceQueueTooOld",
        "SluiceBreakerOpen",
    } <= names
    assert names == tested, f"alerts without a promtool test: {sorted(names - tested)}"


def test_alert_rules_use_exported_metrics() -> None:
    for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            used = sluice_names(rule["expr"])
            assert used, rule["alert"]
            assert used <= SERIES, f"{rule['alert']}: not exported: {sorted(used - SERIES)}"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "sluice.json").read_text())
    return doc


def test_dashboard_queries_only_exported_metrics() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "sluice-prometheus", panel["title"]
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            used = sluice_names(expr)
            assert used, f"{panel['title']}: {expr} queries no sluice metric"
            assert used <= SERIES, f"{panel['title']}: not exported: {sorted(used - SERIES)}"
            assert expr.count("(") == expr.count(")"), expr


def test_dashboard_has_the_live_page_panels_plus_limits_and_retries() -> None:
    titles = {p["title"] for p in dashboard()["panels"]}
    live_page = (ROOT / "services" / "metrics" / "sluice_metrics" / "static" / "index.html").read_text()
    page_charts = set(re.findall(r"<h2>([^<(]+?)(?: \([^)]*\))?</h2><canvas", live_page))
    assert page_charts == {"Throughput", "Outcomes", "Run time percentiles", "Queue depths"}
    assert page_charts <= titles
    assert {"Rate-limit decisions", "Retries", "Breakers"} <= titles
    queried = {n for p in dashboard()["panels"] for t in p["targets"] for n in sluice_names(t["expr"])}
    for needed in (
        "sluice_rate_limit_decisions_total",
        "sluice_retry_budget_refusals_total",
        "sluice_breaker_state",
    ):
        assert needed in queried


def test_grafana_provisioning_points_at_the_stack() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus",
        "sluice-prometheus",
        "http://prometheus:9090",
    )
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sluice.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_runs_prometheus_and_grafana() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prom, grafana, metrics = services["prometheus"], services["grafana"], services["metrics"]
    # Grafana is opt-in by profile (no image of it where no registry answers); .env.example turns it on
    assert grafana["profiles"] == ["grafana"]
    assert "\nCOMPOSE_PROFILES=grafana\n" in (ROOT / ".env.example").read_text()
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert prom["depends_on"]["metrics"]["condition"] == "service_healthy"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for volume in (*prom["volumes"], *grafana["volumes"]):
        host = volume.split(":")[0]
        if host.startswith("./"):
            assert (ROOT / host).is_dir(), volume
    for s in (prom, grafana):
        assert s["healthcheck"]["test"]
    assert "ports" not in metrics and metrics["expose"] == ["9108"]  # internal network only
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    assert scrape[0]["static_configs"][0]["targets"] == ["metrics:9108"]
