"""SIGTERM drains: running tasks finish and are acked, the rest goes back to the queue; none lost, none twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import aio_pika
import redis

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology

from .conftest import WorkerProcess, counts, eventually, queue_counts


async def test_sigterm_lets_running_tasks_finish_and_leaves_the_rest_queued(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    r: redis.Redis,
    unique: str,
) -> None:
    n, concurrency, grace = 20, 10, 8.0
    key = f"{unique}:drain"
    topo = Topology.from_settings(settings)
    async with Publisher(settings) as pub:
        report = await pub.publish_many(
            TaskMessage("wt.record", {"key": key, "n": i, "seconds": 1.0}) for i in range(n)
        )
    assert report.confirmed == n

    first = start_worker(
        "--tasks", "tasks_for_tests", "--concurrency", str(concurrency), "--grace-period", str(grace)
    )

    async def a_batch_running() -> bool:
        return len(counts(r, key, "starts")) >= concurrency

    await eventually(a_batch_running, 30, f"{concurrency} tasks running")
    started = set(counts(r, key, "starts"))
    t0 = time.monotonic()
    code = first.terminate(timeout=grace + 10)
    took = time.monotonic() - t0
    assert code == 0, first.stderr()[-2000:]
    assert took < grace, f"exit took {took:.1f}s, grace period {grace}s"
    log = first.stderr()
    assert "draining" in log
    assert "stopped" in log

    runs = counts(r, key, "runs")
    assert set(runs) == started, "every task running at SIGTERM finished (and only those started)"
    assert all(v == 1 for v in runs.values())
    assert int(r.get(f"{key}:max") or 0) <= concurrency
    # the others were never started and are back in the queue, ready: nothing lost
    ready, consumers = await queue_counts(channel, topo.queue("default"))
    assert (ready, consumers) == (n - len(runs), 0)

    # a second worker takes the rest; each task has run exactly once overall
    second = start_worker("--tasks", "tasks_for_tests", "--concurrency", str(concurrency))

    async def all_ran() -> bool:
        return len(counts(r, key, "runs")) == n

    await eventually(all_ran, 30, f"all {n} tasks")
    assert second.terminate(timeout=15) == 0
    assert counts(r, key, "runs") == dict.fromkeys(range(n), 1)
    assert counts(r, key, "starts") == dict.fromkeys(range(n), 1), "a task was started twice"
    assert (await queue_counts(channel, topo.queue("default")))[0] == 0


async def long_task_running(
    settings: Settings, start_worker: Callable[..., WorkerProcess], r: redis.Redis, key: str, grace: str
) -> WorkerProcess:
    """A worker with ``--grace-period grace`` running one 60 s task."""
    async with Publisher(settings) as pub:
        await pub.publish(TaskMessage("wt.record", {"key": key, "n": 0, "seconds": 60.0}))
    w = start_worker("--tasks", "tasks_for_tests", "--grace-period", grace)

    async def running() -> bool:
        return bool(counts(r, key, "starts"))

    await eventually(running, 30, "the long task to start")
    return w


async def assert_cancelled_and_requeued(
    w: WorkerProcess, channel: aio_pika.abc.AbstractChannel, settings: Settings, r: redis.Redis, key: str
) -> None:
    assert "cancelled, to be redelivered" in w.stderr()
    assert counts(r, key, "runs") == {}, "the cancelled task did not count as done"
    queue = Topology.from_settings(settings).queue("default")

    async def back_in_queue() -> bool:
        return (await queue_counts(channel, queue)) == (1, 0)

    await eventually(back_in_queue, 10, "the cancelled task back in its queue")


async def test_a_second_signal_cuts_the_grace_period_short(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    r: redis.Redis,
    unique: str,
) -> None:
    key = f"{unique}:force"
    w = await long_task_running(settings, start_worker, r, key, grace="60")
    w.proc.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return "draining" in w.stderr()

    await eventually(draining, 10, "the drain to begin")
    t0 = time.monotonic()
    code = w.terminate(timeout=15)  # the second SIGTERM
    assert code == 0, w.stderr()[-2000:]
    assert time.monotonic() - t0 < 10
    await assert_cancelled_and_requeued(w, channel, settings, r, key)


async def test_tasks_still_running_after_the_grace_period_are_cancelled_and_redelivered(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    r: redis.Redis,
    unique: str,
) -> None:
    key = f"{unique}:grace"
    w = await long_task_running(settings, start_worker, r, key, grace="1")
    t0 = time.monotonic()
    assert w.terminate(timeout=15) == 0, w.stderr()[-2000:]
    assert 1.0 <= time.monotonic() - t0 < 6.0
    await assert_cancelled_and_requeued(w, channel, settings, r, key)
