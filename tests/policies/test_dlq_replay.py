"""DLQ replay round trip with a real worker: every replayed task runs (afresh, attempt 1)."""

from __future__ import annotations

import json
import subprocess

import redis

from .conftest import SLUICE, Workers, publish, queue_state, records, wait_until


def test_every_replayed_task_runs(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    workers.start()
    workers.wait_consumers(1)
    key, n = f"{unique}:failing", 20
    r.set(key + ":down", 1)
    ids = publish(env, "pol.failing", [json.dumps({"key": key, "n": i}) for i in range(n)])
    wait_until(lambda: (queue_state(amqp_url, f"{unique}.dlq") or (0, 0))[0] >= n, 20, f"{n} dead letters")
    listed = subprocess.run(
        [*SLUICE, "dlq", "ls", "--json", "--limit", "100"], env=env, capture_output=True, text=True
    )
    dead = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert {d["error_type"] for d in dead} == {"ValueError"}

    r.delete(key + ":down")
    out = subprocess.run(
        [*SLUICE, "dlq", "replay", "--all", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["replayed"]) == sorted(ids)
    wait_until(lambda: r.llen(key) >= 2 * n, 20, "the replayed runs")
    runs = records(r, key)
    per_task: dict[int, list[int]] = {}
    for i, attempt, _ in runs:
        per_task.setdefault(i, []).append(attempt)
    assert per_task == {i: [1, 1] for i in range(n)}, "each failed once, then ran once more at attempt 1"
    assert (queue_state(amqp_url, f"{unique}.dlq") or (1, 0))[0] == 0
