"""The task handles' figures in the metrics service (issue 13): cancels recorded, unique duplicates refused,
cancels honoured and the producers' waiters, whichever door was used.

Through the users' doors: the installed ``sluice`` console script (``task cancel``, ``publish
--unique-key``, ``status``), a real ``sluice producer`` (POST with ``unique_key``, ``?wait=S``, DELETE),
``TaskHandles`` in Python, a real ``sluice worker``, and the real ``sluice metrics`` service's ``/metrics``
and ``/api/summary``. Cancels and duplicates are counted in Redis (the CLI is a short-lived process), so
they are fleet totals; the waiters are a gauge of the producers' snapshots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from fleet_helpers import HERE, SLUICE, Service, until
from redis.asyncio import Redis
from test_fleet import sluice
from test_live_page import page, table_rows

from sluice.handles import TaskHandles
from sluice.settings import Settings
from support.ports import free_port
from support.workers import WorkerProcess

CANCELS = "sluice_task_cancels_recorded_total"
DUPLICATES = "sluice_unique_duplicates_total"
WAITERS = "sluice_task_waiters"


def handles_of(svc: Service, env: dict[str, str]) -> dict[str, Any]:
    """``totals.task_handles`` as ``sluice status --json`` prints it."""
    run = sluice(env, "status", "--url", svc.url, "--json")
    assert run.returncode == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)["totals"]["task_handles"]
    return doc


def table_row(svc: Service, env: dict[str, str]) -> dict[str, str]:
    """The task handles table of ``sluice status``: column title -> cell."""
    run = sluice(env, "status", "--url", svc.url)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "task handles")
    header = [c.strip() for c in lines[start + 2].split("┃")[1:-1]]
    cells = [c.strip() for c in lines[start + 4].split("│")[1:-1]]
    return dict(zip(header, cells, strict=True))


@pytest.fixture
def clean_keys(topology: Settings) -> Iterator[None]:
    """The test's Redis keys (its prefix) deleted after it."""
    yield
    with redis_sync.Redis.from_url(topology.redis_url) as r:
        keys = list(r.scan_iter(f"{topology.prefix}*", count=1000))
        if keys:
            r.delete(*keys)


async def test_cancels_and_unique_duplicates_are_counted_whichever_door(
    service: Service, env: dict[str, str], topology: Settings, tmp_path: Path, clean_keys: None
) -> None:
    """`sluice task cancel ID ID`, `sluice task cancel --task --before`, `TaskHandles.cancel` and a second
        `sluice publish --unique-key` are counted in /metrics, `sluice status --json`, its table and the live
    page; a cancelled
        task a real worker then receives is the `cancelled` outcome (cancels honoured)."""
    wenv = {**env, "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])}
    # a tracked task published with no worker running, then cancelled while queued
    pub = sluice(wenv, "publish", "fleet.ok", "-p", '{"n": 1}', "--track", "--tasks", "fleet_tasks")
    assert pub.returncode == 0, pub.stderr
    doomed = pub.stdout.strip()
    unknown = f"never-{uuid.uuid4().hex}"
    cancel = sluice(env, "task", "cancel", doomed, unknown)
    assert cancel.returncode == 0, cancel.stderr
    assert f"{doomed}: cancelled (was queued)" in cancel.stdout
    batch = sluice(env, "task", "cancel", "--task", "fleet.nothing", "--before", "now")
    assert batch.returncode == 0, batch.stderr
    client = Redis.from_url(topology.redis_url)
    try:
        async with TaskHandles(client, topology.prefix) as handles:  # the Python door
            (report,) = await handles.cancel(f"py-{uuid.uuid4().hex}")
            assert report.state.value == "cancelled"
    finally:
        await client.aclose()

    key = f"nightly-{uuid.uuid4().hex[:8]}"
    first = sluice(
        wenv, "publish", "fleet.ok", "-p", '{"n": 2}', "--unique-key", key, "--tasks", "fleet_tasks"
    )
    again = sluice(
        wenv, "publish", "fleet.ok", "-p", '{"n": 2}', "--unique-key", key, "--tasks", "fleet_tasks"
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert again.stdout.strip() == first.stdout.strip()  # the duplicate answers the waiting task's id

    def counted() -> dict[Any, float] | None:
        s = service.samples()
        got = {
            "id": s.get((CANCELS, (("scope", "id"),))),
            "batch": s.get((CANCELS, (("scope", "batch"),))),
            "dup": s.get((DUPLICATES, ())),
        }
        return got if got == {"id": 3, "batch": 1, "dup": 1} else None

    try:
        until(counted, seconds=20)
    except AssertionError:
        raise AssertionError(f"/metrics: {service.metrics()}") from None

    worker = WorkerProcess(["--tasks", "fleet_tasks", "--concurrency", "4"], wenv, tmp_path / "worker.log")
    try:
        got = until(lambda: (h := handles_of(service, env))["cancels_honoured"] == 1 and h, seconds=30)
        assert got["cancels_recorded"] == 3 and got["cancel_rules_recorded"] == 1, got
        assert got["unique_duplicates"] == 1 and got["waiters"] == 0, got
        assert {"tracked", "results_stored", "results_refused", "tracking_failures"} <= set(got)
        row = table_row(service, env)
        assert row["cancels recorded"] == "3" and row["batch cancels"] == "1", row
        assert row["cancels honoured"] == "1" and row["unique duplicates refused"] == "1", row
        assert row["waiters"] == "0", row
        (cells,) = table_rows(page(tmp_path, service.url), "handles")  # the live page, in Chromium
        assert cells[4:] == ["3", "1", "1", "1", "0"], cells
        completed = service.samples()
        assert (
            completed[("sluice_tasks_completed_total", (("outcome", "cancelled"), ("task", "fleet.ok")))] == 1
        )
    finally:
        worker.kill()
    assert "Traceback" not in worker.stderr(), worker.stderr()


def _start_producer(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [SLUICE, "producer", "--host", "127.0.0.1", "--port", str(port), "--max-wait", "40"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    until(ready, seconds=30)
    return proc, url


def test_a_producers_waiters_and_http_cancels_and_duplicates_reach_the_metrics_service(
    service: Service, env: dict[str, str], tmp_path: Path, clean_keys: None
) -> None:
    """A long poll open on a real `sluice producer` is `sluice_task_waiters` 1 in /metrics, `waiters` 1 in
    the summary and `sluice status`; DELETE /v1/tasks/{id} ends it (waiters back to 0, a cancel recorded);
    a POST with a taken `unique_key` (200, `duplicate_of`) is a unique duplicate refused."""
    proc, url = _start_producer(env, tmp_path / "producer.log")
    try:
        with httpx.Client(base_url=url, timeout=20) as c:
            r = c.post("/v1/tasks", json={"task": "demo.echo", "payload": {}, "track": True})
            assert r.status_code == 202, r.text
            task_id = r.json()["id"]
            body = {"task": "demo.echo", "payload": {}, "unique_key": f"u-{uuid.uuid4().hex[:8]}"}
            held = c.post("/v1/tasks", json=body)
            assert held.status_code == 202, held.text
            dup = c.post("/v1/tasks", json=body)
            assert dup.status_code == 200 and dup.json()["duplicate_of"] == held.json()["id"], dup.text

        answer: dict[str, Any] = {}

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                answer["resp"] = c.get(f"/v1/tasks/{task_id}", params={"wait": 40})

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        until(lambda: service.samples().get((WAITERS, ())) == 1, seconds=20)
        got = handles_of(service, env)
        assert got["waiters"] == 1 and got["unique_duplicates"] == 1, got
        assert table_row(service, env)["waiters"] == "1"

        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=20) as c:
            gone = c.delete(f"/v1/tasks/{task_id}")
        assert gone.status_code == 200, gone.text
        poller.join(20)
        assert not poller.is_alive() and time.monotonic() - started < 20
        assert answer["resp"].status_code == 200 and answer["resp"].json()["state"] == "cancelled"
        until(lambda: service.samples().get((WAITERS, ())) == 0, seconds=20)
        until(lambda: service.samples().get((CANCELS, (("scope", "id"),))) == 1, seconds=20)
        after = handles_of(service, env)
        assert after["waiters"] == 0 and after["cancels_recorded"] == 1, after
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, (tmp_path / "producer.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
