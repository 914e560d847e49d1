"""The same scenario through sluice.testing and through a real ``sluice worker --burst`` on the real
RabbitMQ and Redis: the same runs, the same successes, the same dead letters (reason and attempt).

The scenario: plain tasks, a retry that succeeds, a retry that ends in the DLQ, a rate-limited burst,
an idempotency key published twice, an invalid payload and an unknown task. The worker takes a few
seconds of real time (the 1 s delay tiers, the burst's quiet second); the harness a few milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import redis

from sluice import Publisher, Settings
from sluice.deadletters import DeadLetter, DeadLetterQueue
from sluice.protocol import TaskMessage
from sluice.testing import TestWorker
from support.workers import WorkerProcess, worker_env

from . import compare_tasks

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


def scenario() -> list[TaskMessage]:
    return [
        TaskMessage("cmp.ok", {"n": 1}),
        TaskMessage("cmp.ok", {"n": 2}),
        TaskMessage("cmp.flaky", {"n": 3}),
        TaskMessage("cmp.doomed", {"n": 4}),
        *(TaskMessage("cmp.limited", {"n": i}) for i in range(4)),
        TaskMessage("cmp.once", {"n": 5}, idempotency_key="k-1"),
        TaskMessage("cmp.once", {"n": 6}, idempotency_key="k-1"),
        TaskMessage("cmp.ok", {"n": "not a number"}),
        TaskMessage("cmp.nobody", {}),
    ]


def summary(runs: list[str], dead: list[DeadLetter]) -> tuple[Counter[str], list[tuple[str, ...]]]:
    """(runs by "task id ok|failed", dead letters as (id, task, reason, attempt)) of one run."""
    letters = sorted((d.id, d.task or "", d.reason, str(d.attempt)) for d in dead)
    return Counter(runs), letters


async def in_the_harness(
    messages: list[TaskMessage], monkeypatch: pytest.MonkeyPatch
) -> tuple[Counter[str], list[tuple[str, ...]]]:
    runs: list[str] = []
    monkeypatch.setattr(compare_tasks, "local", runs)
    async with TestWorker([compare_tasks]) as w:
        for m in messages:
            w.publish(m)
        await w.join()
        return summary(runs, w.dead_letters)


async def publish(settings: Settings, messages: list[TaskMessage]) -> None:
    async with Publisher(settings) as p:
        for m in messages:
            await p.publish(m)


async def dead_letters(settings: Settings) -> list[DeadLetter]:
    async with DeadLetterQueue(settings) as dlq:
        return await dlq.browse()


def test_the_harness_and_a_real_worker_agree(
    amqp_url: str,
    redis_url: str,
    unique: str,
    r: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = scenario()
    simulated = asyncio.run(in_the_harness(messages, monkeypatch))

    settings = Settings(amqp_url=amqp_url, redis_url=redis_url, prefix=unique, queue_type="classic")
    asyncio.run(publish(settings, messages))
    env = worker_env(
        amqp_url, redis_url, unique, HERE, SLUICE_METRICS_ENABLED="false", SLUICE_QUEUE_TYPE="classic"
    )
    # one delivery at a time, as the harness runs by default (TestWorker(concurrency=1)): with more, the
    # second delivery of the idempotency key can find the first still running, and wait out its lease
    args = ["--tasks", "compare_tasks", "--burst", "--concurrency", "1"]
    worker = WorkerProcess(args, env, tmp_path / "worker.log")
    assert worker.wait(90) == 0, worker.stderr()[-2000:]
    real_runs = [line.decode() for line in r.lrange(f"{unique}:runs", 0, -1)]
    real = summary(real_runs, asyncio.run(dead_letters(settings)))

    assert simulated == real
    runs, letters = simulated
    assert sum(runs.values()) == 11  # 2 ok + 2 flaky + 2 doomed + 4 limited + 1 once
    assert [(reason, attempt) for _, _, reason, attempt in sorted(letters, key=lambda x: x[2])] == [
        ("handler_error", "2"),
        ("invalid_payload", "1"),
        ("unknown_task", "1"),
    ]
