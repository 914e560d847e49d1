"""RabbitMQ stopped and started under a running worker: its consumer really comes back, nothing is lost."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
import redis

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology
from support.brokerctl import rabbitmqctl_argv

from .conftest import WorkerProcess, eventually

FLAG = Path("/tmp/sluice-broker-disruption")


def rabbitmqctl(*args: str) -> None:
    subprocess.run([*rabbitmqctl_argv(), *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def broker_restart() -> Iterator[Callable[[], None]]:
    """Stops and starts the RabbitMQ app; always restores it."""
    stopped = False

    def restart() -> None:
        nonlocal stopped
        FLAG.touch()
        stopped = True
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        stopped = False
        FLAG.unlink(missing_ok=True)

    try:
        yield restart
    finally:
        if stopped:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        FLAG.unlink(missing_ok=True)


async def consumer_count(amqp_url: str, queue: str) -> int:
    """Consumers on ``queue``; 0 while the broker does not answer."""
    try:
        conn = await aio_pika.connect(amqp_url, timeout=2)
    except Exception:
        return 0
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return q.declaration_result.consumer_count or 0
    except Exception:
        return 0
    finally:
        await conn.close()


@pytest.mark.disruptive
@pytest.mark.slow
async def test_consumers_come_back_after_a_broker_restart(
    settings: Settings,
    channel: aio_pika.abc.AbstractChannel,
    start_worker: Callable[..., WorkerProcess],
    broker_restart: Callable[[], None],
    r: redis.Redis,
    unique: str,
) -> None:
    # quorum queues (the default) come back by themselves after start_app on a single node
    key = f"{unique}:restart"
    queue = Topology.from_settings(settings).queue("default")
    w = start_worker("--tasks", "tasks_for_tests", "--concurrency", "8")

    async def consuming() -> bool:
        return await consumer_count(settings.amqp_url, queue) == 1

    await eventually(consuming, 30, "the worker's consumer")
    before = 50
    async with Publisher(settings) as pub:
        rep = await pub.publish_many(TaskMessage("wt.record", {"key": key, "n": i}) for i in range(before))
    assert rep.confirmed == before

    async def ran(n: int) -> bool:
        return r.hlen(f"{key}:runs") >= n

    await eventually(lambda: ran(before), 30, "the tasks published before the restart")
    # and some running while the broker goes away: their deliveries die with the channel and come back
    slow = range(1000, 1008)
    async with Publisher(settings) as pub:
        rep = await pub.publish_many(
            TaskMessage("wt.record", {"key": key, "n": i, "seconds": 1.5}) for i in slow
        )
    assert rep.confirmed == len(slow)

    async def slow_running() -> bool:
        return r.hlen(f"{key}:starts") >= before + len(slow)

    await eventually(slow_running, 30, "the slow tasks to start")

    await asyncio.to_thread(broker_restart)
    t0 = time.monotonic()
    await eventually(consuming, 30, "the consumer back after the restart", every=0.25)
    back_after = time.monotonic() - t0
    assert w.proc.poll() is None, "the worker exited on a broker restart"

    after = 50
    async with Publisher(settings) as pub:
        rep = await pub.publish_many(
            TaskMessage("wt.record", {"key": key, "n": i}) for i in range(before, before + after)
        )
    assert rep.confirmed == after
    await eventually(lambda: ran(before + after), 30, "the tasks published after the restart")
    await eventually(lambda: ran(before + after + len(slow)), 30, "the slow tasks, redelivered")
    runs = {int(k) for k in r.hkeys(f"{key}:runs")}
    assert runs == set(range(before + after)) | set(slow), "a confirmed task was never processed"
    log = w.stderr()
    assert "reconnecting" in log
    assert "session 2" in log
    assert w.terminate(timeout=15) == 0
    print(f"consumer back {back_after:.1f}s after start_app returned")
