"""The fair-share lag in the metrics, through the real ``sluice metrics`` service: a worker's snapshots
name the sub-queue each task came from, so the queue wait and the oldest age are per sub-queue
(``{prefix}.q.fairq.f{i}``), one series per sub-queue whatever the tenants."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import redis
from fair_tasks import SHARDS

from metrics.fleet_helpers import start_service, until
from sluice.fair import shard_of
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


def test_the_queue_wait_and_age_are_reported_per_sub_queue(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    service = start_service(env, tmp_path / "metrics.log")
    worker = WorkerProcess(["--tasks", "fair_tasks"], env, tmp_path / "w.log")
    try:
        worker.wait_consuming(amqp_url, f"{prefix}.q.fairq.f0")
        record = f"{prefix}:m"
        tenants = ["A", "B", "acme"]
        lines = "".join(json.dumps({"record": record, "tenant": t, "seconds": 0.01}) + "\n" for t in tenants)
        done = subprocess.run(
            [SLUICE, "publish", "fair.work", "--tasks", "fair_tasks", "-"],
            input=lines,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        subs = {f"{prefix}.q.fairq.f{shard_of(t, SHARDS)}" for t in tenants}

        def per_sub_queue() -> dict[str, float] | None:
            samples = service.samples()
            waits = {
                dict(labels)["queue"]: v
                for (name, labels), v in samples.items()
                if name == "sluice_task_queue_wait_seconds_count" and ".q.fairq.f" in dict(labels)["queue"]
            }
            ages = {
                dict(labels)["queue"]
                for (name, labels), _ in samples.items()
                if name == "sluice_queue_oldest_age_seconds" and ".q.fairq.f" in dict(labels)["queue"]
            }
            return waits if set(waits) == subs and subs <= ages else None

        waits = until(per_sub_queue, 30)
        assert waits == {
            q: 1.0 for q in subs
        }  # one task started from each tenant's sub-queue, no tenant label
        assert not any(
            "tenant" in line for line in service.metrics().splitlines() if not line.startswith("#")
        )
        assert worker.terminate(timeout=30) == 0, worker.stderr()[-3000:]
    finally:
        worker.kill()
        service.stop()
