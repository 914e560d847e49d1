"""The scheduler's series as served at /metrics of a real process, the no-leader alert (promtool) and the
Grafana dashboard (it queries only series the scheduler exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from sluice_scheduler.metrics import SchedulerMetrics
from support.ports import free_port
from support.waiting import wait_until
from support.workers import stop_all

from .procs import scheduler_env, start_scheduler, wait_leader

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"


def exported() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in SchedulerMetrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_healthz_and_metrics_of_a_running_scheduler(
    amqp_url: str, redis_url: str, unique: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    port = free_port()
    s = start_scheduler(scheduler_env(amqp_url, redis_url, unique), tmp_path / "s.log", "--port", str(port))
    try:
        wait_leader(r, unique, s.proc.pid)
        health = wait_until(lambda: _get(f"http://127.0.0.1:{port}/healthz"), 30, "/healthz")
        assert health.status_code == 200 and health.json()["leader"] is True
        fired = wait_until(
            lambda: (
                'sluice_scheduler_fires_total{schedule="tick"}'
                in _get(f"http://127.0.0.1:{port}/metrics").text
            ),
            30,
            "a fire counted",
        )
        assert fired
        text = _get(f"http://127.0.0.1:{port}/metrics").text
        assert "sluice_scheduler_leader 1.0" in text and "sluice_scheduler_leader_changes_total 1.0" in text
        assert "sluice_scheduler_fire_lag_seconds_bucket" in text
    finally:
        assert stop_all([s]) == [0], s.stderr()[-2000:]


def _get(url: str) -> httpx.Response:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return httpx.Response(599)


def test_the_no_leader_alert_fires_when_no_replica_leads() -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus`", pytrace=False)
    for args in (["check", "rules", "scheduler_alerts.yml"], ["test", "rules", "scheduler_alerts_test.yml"]):
        done = subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "sluice_scheduler_leader" in (PROM / "scheduler_alerts.yml").read_text()


def test_the_dashboard_queries_only_exported_series() -> None:
    doc = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "scheduler.json").read_text())
    names = exported()
    for panel in doc["panels"]:
        assert panel["datasource"]["uid"] == "sluice-prometheus"
        for target in panel["targets"]:
            used = set(re.findall(r"\bsluice_[a-z0-9_]+", target["expr"]))
            assert used and used <= names, (panel["title"], used - names)
