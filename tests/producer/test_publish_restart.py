"""``sluice publish`` rides through a broker restart, on a private RabbitMQ node (never the default one).

20,000 tasks go through the installed console script; once the first ids are on its stdout (publishing
is really in flight) the node's app is stopped for 3 s and started again. Then a real worker runs
every task, counting each run by task id in Redis: every printed id ran, and the tasks that ran twice
(a confirm lost after the broker stored the message) are no more than the re-publishes the CLI
reported. A second test keeps the broker down past ``--give-up-after``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio as aioredis

from sluice.topology import Topology
from support.rabbit_node import RabbitNode, private_node
from support.workers import SLUICE, WorkerProcess, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HERE = Path(__file__).parent
N = 20_000
SUMMARY = re.compile(r"published (\d+), failed (\d+), republished (\d+) in")


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own (own name, port, data): stopped and deleted after."""
    with private_node() as n:
        yield n


def child_env(node: RabbitNode, prefix: str, **extra: str) -> dict[str, str]:
    """A child's environment on the private node (restart_tasks and tests/support importable)."""
    return worker_env(node.url, None, prefix, HERE, **extra)


@dataclass
class Run:
    proc: asyncio.subprocess.Process
    ids: list[str] = field(default_factory=list)
    err: str = ""
    first_ids: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def publishing(args: list[str], env: dict[str, str], source: bytes = b"") -> AsyncIterator[Run]:
    """``sluice publish ARGS``; its stdout is read as it comes (ids counted, first_ids set at 200)."""
    proc = await asyncio.create_subprocess_exec(
        SLUICE, "publish", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    run = Run(proc)

    async def read_out() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            run.ids.append(line.decode().strip())
            if len(run.ids) >= 200:
                run.first_ids.set()

    async def read_err() -> None:
        assert proc.stderr is not None
        run.err = (await proc.stderr.read()).decode()

    async def write_in() -> None:
        assert proc.stdin is not None
        proc.stdin.write(source)
        await proc.stdin.drain()
        proc.stdin.close()

    readers = [asyncio.create_task(f()) for f in (write_in, read_out, read_err)]
    try:
        yield run
        async with asyncio.timeout(240):
            await asyncio.gather(*readers)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for r in readers:
            r.cancel()


async def ready_messages(node: RabbitNode, prefix: str) -> int:
    conn = await aio_pika.connect(node.url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(Topology(prefix=prefix).queue("default"), passive=True)
        return q.declaration_result.message_count or 0


@pytest.fixture
async def counts(redis_url: str, unique: str) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A Redis client and this test's hash of runs per task id (deleted after)."""
    client = aioredis.Redis.from_url(redis_url)
    key = f"{unique}:runs"
    try:
        yield client, key
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_broker_restart_costs_nothing(
    node: RabbitNode, unique: str, redis_url: str, counts: tuple[aioredis.Redis, str], tmp_path: Path
) -> None:
    client, key = counts
    source = "".join(json.dumps({"key": key, "n": n}) + "\n" for n in range(N)).encode()
    env = child_env(node, unique)

    async with publishing(["restart.count", "-"], env, source) as run:
        async with asyncio.timeout(120):
            await run.first_ids.wait()  # publishing is in flight
        await asyncio.to_thread(node.stop_app)
        printed_at_stop = len(run.ids)
        await asyncio.sleep(3)  # the outage itself
        await asyncio.to_thread(node.start_app)
    assert run.proc.returncode == 0, run.err
    assert "Traceback" not in run.err
    assert printed_at_stop < N, "the stop came after publishing had finished"
    assert "sluice: broker unavailable (" in run.err  # it noticed the outage ...
    assert "sluice: the broker is back after" in run.err  # ... and went on
    summary = SUMMARY.search(run.err)
    assert summary is not None, run.err
    published, failed, republished = map(int, summary.groups())
    assert (published, failed) == (N, 0)
    assert len(run.ids) == N and len(set(run.ids)) == N
    assert republished > 0  # tasks in flight at the stop were sent again

    stored = await ready_messages(node, unique)  # every copy the broker holds, duplicates included
    # burst mode: the worker exits 0 by itself once the queue is empty and every delivery settled
    worker = WorkerProcess(
        ["--tasks", "restart_tasks", "--concurrency", "128", "--burst"],
        child_env(node, unique, SLUICE_REDIS_URL=redis_url, SLUICE_METRICS_ENABLED="false"),
        tmp_path / "worker.log",
    )
    code = await asyncio.to_thread(worker.wait, 180)
    assert code == 0, worker.stderr()[-2000:]
    ran = sum(map(int, await client.hvals(key)))
    assert ran == stored, f"the worker ran {ran} of {stored}; its log ends: {worker.stderr()[-2000:]}"
    runs = {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}
    assert set(runs) == set(run.ids)  # every printed id ran, and nothing else
    duplicates = sum(runs.values()) - N
    assert duplicates == stored - N
    assert duplicates <= republished  # each duplicate is a re-publish the CLI reported
    print(f"stop after {printed_at_stop} ids; republished {republished}; ran twice {duplicates}")


async def test_an_outage_past_give_up_after_fails_the_rest(node: RabbitNode, unique: str) -> None:
    give_up = 5.0
    env = child_env(node, unique)
    args = ["restart.count", "--payload", '{"key": "unused", "n": 0}', "--count", str(N)]
    try:
        async with publishing([*args, "--give-up-after", f"{give_up:g}"], env) as run:
            async with asyncio.timeout(120):
                await run.first_ids.wait()
            await asyncio.to_thread(node.stop_app)
            stopped = time.monotonic()
        took = time.monotonic() - stopped
    finally:
        await asyncio.to_thread(node.start_app)
    assert run.proc.returncode == 1, run.err
    assert "Traceback" not in run.err
    # it waited for the broker, then gave up within the deadline (plus closing its connections)
    assert give_up - 1 <= took <= give_up + 10, took
    printed = len(run.ids)
    assert printed < N
    lost = N - printed
    assert f"sluice: error: gave up: the broker was unavailable for 5s; {lost} tasks not confirmed" in run.err
    summary = SUMMARY.search(run.err)
    assert summary is not None, run.err
    assert tuple(map(int, summary.groups()))[:2] == (printed, lost)
