"""Fixtures of the worker tests: settings and worker processes on the test's prefix, a raw channel.

The clients (``r``, ``redis``) are tests/conftest.py's; waits, queue probes and the worker process are
tests/support's, named here too for the test modules that import them from this one.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
import redis

from sluice.settings import Settings
from sluice.topology import Topology
from support.queues import queue_counts
from support.waiting import eventually
from support.workers import SLUICE_WORKER, WorkerProcess, worker_env

__all__ = ["SLUICE_WORKER", "WorkerProcess", "counts", "eventually", "queue_counts"]

HERE = Path(__file__).resolve().parent
# what these tests start by default: the module form (SLUICE_WORKER is the installed console script)
MODULE_WORKER = [sys.executable, "-m", "sluice_worker"]


@pytest.fixture
def settings(amqp_url: str, redis_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, redis_url=redis_url, prefix=unique, grace_period=5.0)


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    """Environment of a worker subprocess on this test's prefix, with tasks_for_tests importable."""
    return worker_env(amqp_url, redis_url, unique, HERE)


@pytest.fixture
async def channel(amqp_url: str, unique: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A raw aio-pika channel (no sluice publisher); this test's queues and exchanges are deleted after."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    yield ch
    if not conn.is_closed:
        await conn.close()
    topo = Topology(prefix=unique)
    async with await aio_pika.connect(amqp_url) as fresh:  # the test's may have died with a broker restart
        cleanup = await fresh.channel()
        for q in (topo.queue("default"), topo.dead_queue):
            await cleanup.queue_delete(q)
        for ex in (topo.tasks_exchange, topo.dead_exchange):
            await cleanup.exchange_delete(ex)


def counts(r: redis.Redis, key: str, what: str) -> dict[int, int]:
    """A tasks_for_tests hash (``starts`` / ``runs``) as {n: count}."""
    return {int(k): int(v) for k, v in r.hgetall(f"{key}:{what}").items()}


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes (``python -m sluice_worker ARGS`` unless ``command`` says otherwise);
    any still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(
        *args: str, extra_env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker{len(started)}.log"
        w = WorkerProcess(list(args), {**env, **(extra_env or {})}, log, command or MODULE_WORKER)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
