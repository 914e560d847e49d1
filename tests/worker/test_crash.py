"""A worker killed with SIGKILL mid-task loses nothing: its unacked deliveries go to the next worker."""

from __future__ import annotations

import signal
from collections.abc import Callable

import aio_pika
import redis

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology

from .conftest import WorkerProcess, counts, eventually, queue_counts


async def test_sigkill_mid_task_loses_nothing(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    r: redis.Redis,
    unique: str,
) -> None:
    n, key = 10, f"{unique}:kill"
    async with Publisher(settings) as pub:
        rep = await pub.publish_many(
            TaskMessage("wt.record", {"key": key, "n": i, "seconds": 1.0}) for i in range(n)
        )
    assert rep.confirmed == n
    first = start_worker("--tasks", "tasks_for_tests", "--concurrency", "5")

    async def some_running() -> bool:
        return len(counts(r, key, "starts")) >= 5

    await eventually(some_running, 30, "5 tasks running")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert counts(r, key, "runs") == {}, "killed 1 s tasks cannot have finished"

    second = start_worker("--tasks", "tasks_for_tests", "--concurrency", "10")

    async def all_ran() -> bool:
        return len(counts(r, key, "runs")) == n

    await eventually(all_ran, 30, f"all {n} tasks on the second worker")
    assert counts(r, key, "runs") == dict.fromkeys(range(n), 1)
    assert second.terminate(timeout=15) == 0
    assert (await queue_counts(channel, Topology.from_settings(settings).queue("default")))[0] == 0
