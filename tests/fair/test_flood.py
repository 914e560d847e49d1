"""Fair share per tenant (issue 14), through the user's doors: tenant A floods 20,000 tasks through the
installed ``sluice publish``, tenant B then sends 10, one real ``sluice worker`` runs them all.

The bound for B, with ``fair``: B's sub-queue is empty, so the broker delivers B's tasks at once (the
consumer of B's sub-queue has all of its prefetch free); in the worker they wait for a slot (a FIFO
semaphore of ``concurrency`` C) behind at most the prefetch window P of A's sub-queue. B's 10 end at most
``(P + 10) / C * t + t`` after they reach the worker (t the task time): here (64 + 10) / 16 * 0.02 + 0.02
= 0.11 s. :data:`BOUND_S` is that plus the broker's delivery, the acks and a shared, busy 2-core box:
2 s from the confirm of B's publish. Without ``fair``, B's tasks are behind A's whole backlog in one
FIFO queue: B waits about ``backlog * t / C`` (20,000 * 0.02 / 16 = 25 s) whatever the bound.

Either way every one of the 20,010 tasks runs, once (a hash of runs per task id in Redis).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fair_tasks import SHARDS

from sluice.fair import shard_of
from support.waiting import wait_until
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent
FLOOD = 20_000
B_TASKS = 10
TASK_S = 0.02
CONCURRENCY = 16
PREFETCH = 64
BOUND_S = 2.0  # see the module doc: 0.11 s of queueing in theory, the rest is the box's noise


def _publish(env: dict[str, str], task: str, record: str, tenant: str, n: int) -> None:
    lines = "".join(
        json.dumps({"record": record, "tenant": tenant, "seconds": TASK_S}) + "\n" for _ in range(n)
    )
    done = subprocess.run(
        [SLUICE, "publish", task, "--tasks", "fair_tasks", "-"],
        input=lines,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _flood(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path, task: str, queue: str
) -> dict[str, float]:
    """A's flood, then B's 10, one worker: B's wait and A's progress when B was done; every task ran once."""
    record = f"{prefix}:flood"
    env = worker_env(amqp_url, redis_url, prefix, HERE, SLUICE_PREFETCH=str(PREFETCH))
    worker = WorkerProcess(
        ["--tasks", "fair_tasks", "--concurrency", str(CONCURRENCY)], env, tmp_path / "w.log"
    )
    try:
        worker.wait_consuming(amqp_url, f"{prefix}.q.{queue}")
        flood_began = time.time()
        _publish(env, task, record, "A", FLOOD)
        t0 = time.time()
        _publish(env, task, record, "B", B_TASKS)
        confirmed = time.time()
        wait_until(lambda: r.llen(f"{record}:b") >= B_TASKS, 300, "B's 10 tasks ran")
        finishes = [entry.decode().split() for entry in r.lrange(f"{record}:b", 0, -1)]
        b_last = max(float(at) for at, _ in finishes)
        a_then = max(int(a) for _, a in finishes)
        wait_until(lambda: int(r.get(f"{record}:done:A") or 0) >= FLOOD, 600, "A's 20,000 ran")
        drained = time.time()
        runs = [int(v) for v in r.hvals(f"{record}:runs")]
        assert len(runs) == FLOOD + B_TASKS and set(runs) == {1}, (len(runs), sorted(set(runs)))
        assert worker.terminate(timeout=60) == 0, worker.stderr()[-3000:]
        assert "Traceback" not in worker.stderr(), worker.stderr()[-3000:]
    finally:
        worker.kill()
    got = {
        "b_after_confirm": b_last - confirmed,
        "b_after_publish": b_last - t0,
        "a_done_then": a_then,
        "a_publish_s": t0 - flood_began,  # the CLI's 20,000 publishes, its start-up included
        "all_done_s": drained - flood_began,
    }
    print(f"\n{task}: {got}")
    return got


def test_tenants_land_in_different_sub_queues() -> None:
    """The premise of the bound below: A and B do not share a sub-queue (see docs/policies.md for a
    collision)."""
    assert shard_of("A", SHARDS) != shard_of("B", SHARDS)


@pytest.mark.timeout(900)
def test_with_fair_b_is_done_within_the_bound_while_a_backlog_waits(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    got = _flood(amqp_url, redis_url, prefix, r, tmp_path, "fair.work", f"fairq.f{shard_of('B', SHARDS)}")
    assert got["b_after_confirm"] <= BOUND_S, got
    assert got["a_done_then"] < FLOOD // 2, got  # A's backlog far from drained


@pytest.mark.timeout(900)
def test_without_fair_b_waits_behind_a_backlog(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    got = _flood(amqp_url, redis_url, prefix, r, tmp_path, "plain.work", "plainq")
    assert got["b_after_confirm"] > 5 * BOUND_S, got
    assert got["a_done_then"] >= FLOOD - PREFETCH - CONCURRENCY, got  # B ran behind (nearly) all of A
