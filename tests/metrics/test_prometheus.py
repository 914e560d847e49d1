"""The exposition with every family filled: promtool lints it, a real Prometheus scrapes and queries it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis
from fleet_helpers import Service, end, start_child, until
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from sluice.resilience import KeySpace
from sluice_metrics.fleet_metrics import METRIC_NAMES


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: `apt-get install -y prometheus`", pytrace=False)
    return exe


@pytest.fixture
def redis_state(redis_url: str, unique: str) -> Iterator[None]:
    """An open breaker and a run-time limit override under the test's prefix."""
    client = redis.Redis.from_url(redis_url)
    keys = KeySpace(unique)
    breaker, limits = keys.key("breaker", "payments"), keys.key("limits", "overrides")
    client.hset(breaker, "state", "o")
    client.hset(limits, "demo.echo", json.dumps({"rate": "600/min", "burst": 5}))
    try:
        yield
    finally:
        client.delete(breaker, limits)
        client.close()


@pytest.fixture
def fed(service: Service, env: dict[str, str], redis_state: None) -> Iterator[Service]:
    """The service with a worker and a producer reporting, and the Redis state read."""
    worker = start_child(env, "worker", 11, 2, 0)
    producer = start_child(env, "producer", 0, 0, 13)
    try:
        until(
            lambda: (
                (d := service.summary())["workers_alive"] == 1
                and d["totals"]["published"] == 13
                and d["breakers"]
            )
        )
        yield service
    finally:
        end(worker)
        end(producer)


def test_every_family_is_exported_and_promtool_is_happy(fed: Service) -> None:
    text = fed.metrics()
    families = {
        f.name
        for f in parse_openmetrics(
            httpx.get(
                fed.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5
            ).text
        )
    }
    exported = {n.removesuffix("_total") for n in METRIC_NAMES}
    assert exported <= families, f"declared but not exported: {sorted(exported - families)}"
    # limits and retries from the worker side need the issue-4 calls; the counter families exist anyway
    lint = subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "" and lint.stderr.strip() == "", lint.stdout + lint.stderr
    samples = fed.samples()
    assert samples[("sluice_breaker_state", (("breaker", "payments"),))] == 1
    assert samples[("sluice_rate_limit_override_per_second", (("limit", "demo.echo"),))] == 10
    assert samples[("sluice_redis_up", ())] == 1


def test_a_real_prometheus_scrapes_and_answers(fed: Service, tmp_path: Path) -> None:
    port = free_port()
    target = fed.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
    )
    argv = [
        binary("prometheus"),  # fails the test with how to install it, before any file is opened
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (tmp_path / "prometheus.log").open("wb") as log:
        prom = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expr: str) -> list[dict[str, object]] | None:
        try:
            resp = httpx.get(api, params={"query": expr}, timeout=2)
        except httpx.TransportError:
            return None
        if resp.status_code != 200:
            return None
        result: list[dict[str, object]] = resp.json()["data"]["result"]
        return result or None

    try:
        success = until(
            lambda: query('sluice_tasks_completed_total{job="sluice",outcome="success"}'),
            seconds=40,
            every=0.5,
        )
        assert success[0]["metric"]["task"] == "demo.echo"  # type: ignore[index]
        assert float(success[0]["value"][1]) == 11  # type: ignore[index]
        alive = until(lambda: query("sluice_workers_alive"), seconds=10)
        assert float(alive[0]["value"][1]) == 1  # type: ignore[index]
        quantile = until(
            lambda: query("histogram_quantile(0.5, sum by (le) (sluice_task_run_seconds_bucket))"), seconds=10
        )
        assert 0 < float(quantile[0]["value"][1]) < 1  # type: ignore[index]
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
