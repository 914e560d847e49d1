"""The scheduler routes a fair task's fires like every other publisher that knows the task: to its
tenant's sub-queue (docs/policies.md, "Fair share"), never to the queue itself. Through the door: the
installed ``sluice scheduler --tasks sched_fair_tasks``, RabbitMQ read by passive declares."""

from __future__ import annotations

from pathlib import Path

import pika

from sluice.fair import shard_of, sub_queue
from sluice.policy import DEFAULT_SHARDS
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import WorkerProcess, stop_all

from .procs import SCHEDULER, scheduler_env


def test_a_fair_tasks_fires_go_to_its_tenants_sub_queue(
    amqp_url: str, redis_url: str, unique: str, tmp_path: Path
) -> None:
    env = scheduler_env(amqp_url, redis_url, unique)
    argv = ["--tasks", "sched_fair_tasks", "--port", "0", "--lease", "2", "--tick", "0.1"]
    proc = WorkerProcess(argv, env, tmp_path / "scheduler.log", command=SCHEDULER)
    queue = f"{unique}.q.schedfair"
    mine = sub_queue(queue, shard_of("t1", DEFAULT_SHARDS))
    try:

        def fired() -> int | None:
            got = queue_state(amqp_url, mine)
            return got[0] if got is not None and got[0] >= 2 else None

        wait_until(fired, 30, f"two fires in {mine}\n{proc.stderr()[-2000:]}")
        assert queue_state(amqp_url, queue) == (0, 0), "nothing in the fair queue itself"
        others = [sub_queue(queue, i) for i in range(DEFAULT_SHARDS) if sub_queue(queue, i) != mine]
        assert [queue_state(amqp_url, q) for q in others] == [(0, 0)] * len(others)
    finally:
        assert stop_all([proc], timeout=20) == [0]
        _delete(amqp_url, [queue, *(sub_queue(queue, i) for i in range(DEFAULT_SHARDS))])


def _delete(amqp_url: str, queues: list[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
    finally:
        conn.close()
