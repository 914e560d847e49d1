"""The backbone end to end: the `sluice` CLI publishes, RabbitMQ carries, a worker process runs.

The worker runs in burst mode (``sluice worker --burst``): it exits 0 by itself once the queue is empty
and nothing runs, so the test ends on that exit, not on polling queue depths.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from support.queues import queue_state
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return worker_env(amqp_url, redis_url, unique, HERE)


@pytest.mark.slow
def test_thousand_tasks_from_the_cli_each_run_exactly_once(
    env: dict[str, str], r: redis.Redis, amqp_url: str, unique: str, tmp_path: Path
) -> None:
    n = 1000
    key = f"{unique}:runs"
    lines = "".join(json.dumps({"key": key, "n": i}) + "\n" for i in range(n))
    pub = subprocess.run(
        [SLUICE, "publish", "e2e.mark", "-"], input=lines.encode(), env=env, capture_output=True, timeout=60
    )
    assert pub.returncode == 0, pub.stderr.decode()
    ids = pub.stdout.decode().split()
    assert len(ids) == n
    assert len(set(ids)) == n

    worker = WorkerProcess(
        ["--tasks", "e2e_tasks", "--concurrency", "32", "--burst"], env, tmp_path / "w.log"
    )
    code = worker.wait(90)  # it ends by itself: the queue drained, every delivery settled and acked
    assert code == 0, f"worker exited {code}: {worker.stderr()[-2000:]}"
    assert queue_state(amqp_url, f"{unique}.q.default") == (0, 0), "burst ended with tasks left"
    runs = {int(k): int(v) for k, v in r.hgetall(key).items()}
    assert sorted(runs) == list(range(n)), "some task never ran"
    twice = {k: v for k, v in runs.items() if v != 1}
    assert not twice, f"tasks run more than once: {dict(list(twice.items())[:5])}"
    ran_ids = {v.decode() for v in r.hgetall(key + ":ids").values()}
    assert ran_ids == set(ids), "the ids the CLI printed are not the ids that ran"
    dlq = queue_state(amqp_url, f"{unique}.dlq")
    assert dlq is not None
    assert dlq[0] == 0, "a valid task was dead-lettered"
