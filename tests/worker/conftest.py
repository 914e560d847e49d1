"""Fixtures of the worker tests: unique prefixes, broker probes, worker processes, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis

from sluice.settings import Settings
from sluice.topology import Topology

HERE = Path(__file__).resolve().parent


@pytest.fixture
def settings(amqp_url: str, redis_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, redis_url=redis_url, prefix=unique, grace_period=5.0)


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    """Environment of a worker subprocess on this test's prefix, with tasks_for_tests importable."""
    return {
        **os.environ,
        "SLUICE_AMQP_URL": amqp_url,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_PREFIX": unique,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture
def r(redis_url: str, unique: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(f"{unique}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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


async def queue_counts(ch: aio_pika.abc.AbstractChannel, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue that exists."""
    q = await ch.declare_queue(name, passive=True)
    res = q.declaration_result
    return res.message_count or 0, res.consumer_count or 0


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float, what: str, every: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


# the installed console script, as a user runs it
SLUICE_WORKER = [str(Path(sys.executable).with_name("sluice")), "worker"]


class WorkerProcess:
    """``python -m sluice_worker`` (or ``command``, e.g. :data:`SLUICE_WORKER`) in a subprocess, its
    stderr in a file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, command: list[str] | None = None
    ) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*(command or [sys.executable, "-m", "sluice_worker"]), *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit status (killed if it overstays ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not exit within {timeout}s: {self.stderr()[-2000:]}") from None


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        *args: str, extra_env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker{len(started)}.log"
        w = WorkerProcess(list(args), {**env, **(extra_env or {})}, log, command)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
