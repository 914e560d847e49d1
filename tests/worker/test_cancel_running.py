"""Cancelling a task in process, through the worker's own Runner and pipeline, on the real Redis: a
cancelled task is not run; a running ``async`` handler gets ``CancelledError`` and the delivery ends
``cancelled`` (never retried) while the worker's own asyncio task is not left cancelled; the worker's
own cancellation still wins; a plain function sees ``ctx.cancelled``.

The cancel arrives as the worker's would: :meth:`TaskHandles.cancel` on Redis, heard by the worker's
:class:`~sluice.handles.CancelWatch` (its notification), which calls the
:class:`~sluice_worker.policies.cancel.Canceller`. Real worker processes: tests/e2e/test_handles_cancel.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from sluice import TaskContext, task
from sluice.handles import State, TaskHandles
from sluice.protocol import TaskMessage, encode_body, now_ms
from sluice.resilience import FixedBackoff, RetryPolicy
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice_worker.outcome import ACK, CANCELLED_QUEUED, CANCELLED_RUNNING, Outcome
from sluice_worker.policies import Policies
from sluice_worker.runner import Runner
from sluice_worker.tracking import WorkerHandles
from support.waiting import eventually


class Job(BaseModel):
    n: int = 0


STARTED: dict[int, asyncio.Event] = {}
SEEN: dict[int, str] = {}
SYNC_STARTED: dict[int, threading.Event] = {}


@task("cancel.sleep", track=True, retry=RetryPolicy(max_attempts=5, backoff=FixedBackoff(0.0)))
async def sleeper(p: Job) -> None:
    STARTED[p.n].set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        SEEN[p.n] = "cancelled"
        raise


@task("cancel.stubborn", result=True)
async def stubborn(p: Job) -> str:
    """Swallows its cancellation and returns: its result stands."""
    STARTED[p.n].set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        SEEN[p.n] = "swallowed"
    return "done anyway"


@task("cancel.plain", retry=RetryPolicy(max_attempts=5, backoff=FixedBackoff(0.0)))
def plain(p: Job, ctx: TaskContext) -> None:
    SYNC_STARTED[p.n].set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctx.cancelled:
            SEEN[p.n] = "ctx.cancelled"
            raise RuntimeError("stopping: cancelled")
        time.sleep(0.01)


@task("cancel.untracked")
async def untracked(p: Job) -> None:
    SEEN[p.n] = "ran"


class Worker:
    def __init__(self, runner: Runner, handles: WorkerHandles, client: TaskHandles) -> None:
        self.runner = runner
        self.handles = handles
        self.client = client

    async def deliver(self, msg: TaskMessage) -> tuple[Outcome, int]:
        """Run ``msg`` in an asyncio task of its own, as the session does: (outcome, that task's
        ``cancelling()`` once the runner answered)."""

        async def one() -> tuple[Outcome, int]:
            out = await self.runner.run(encode_body(msg.payload, 1 << 20), msg.headers(), msg.id)
            me = asyncio.current_task()
            assert me is not None
            return out, me.cancelling()

        return await asyncio.create_task(one())


@pytest.fixture
async def worker(redis_url: str, unique: str) -> AsyncIterator[Worker]:
    client = Redis.from_url(redis_url)
    settings = Settings(redis_url=redis_url, prefix=unique)
    handles = WorkerHandles(client, settings)
    await handles.start()
    policies = Policies(client, unique, tracker=handles.tracker, canceller=handles.canceller)
    pool = ThreadPoolExecutor(2)
    registry = Registry([sleeper, stubborn, plain, untracked])
    try:
        async with TaskHandles(client, unique) as th:
            yield Worker(Runner(registry, settings, pool, policies.failures, policies), handles, th)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await policies.aclose()
        await handles.aclose()
        keys = [k async for k in client.scan_iter(f"{unique}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def job(name: str, n: int) -> TaskMessage:
    STARTED[n] = asyncio.Event()
    SYNC_STARTED[n] = threading.Event()
    SEEN.pop(n, None)
    return TaskMessage(name, {"n": n})


async def test_a_cancelled_task_is_acked_without_running(worker: Worker) -> None:
    msg = job("cancel.untracked", 1)
    await worker.client.cancel(msg.id)
    await eventually(lambda: worker.handles.watch.is_cancelled(msg.id, msg.task, None), 5, "the watch")
    out, cancelling = await worker.deliver(msg)
    assert out is CANCELLED_QUEUED and cancelling == 0
    assert 1 not in SEEN, "the cancelled task ran"


async def test_a_running_async_handler_is_cancelled_within_a_second_and_not_retried(worker: Worker) -> None:
    msg = job("cancel.sleep", 2)
    running = asyncio.ensure_future(worker.deliver(msg))
    await asyncio.wait_for(STARTED[2].wait(), 10)
    asked = time.monotonic()
    await worker.client.cancel(msg.id)
    out, cancelling = await asyncio.wait_for(running, 5)
    took = time.monotonic() - asked
    assert out is CANCELLED_RUNNING, out  # not a Retry, though its policy retries every failure
    assert SEEN[2] == "cancelled" and took < 1.0, took
    assert cancelling == 0, "the worker's own task was left cancelled"
    assert worker.handles.canceller.cancelled == 1 and worker.handles.canceller.running == 0
    s = await worker.client.status(msg.id)
    assert s.state is State.CANCELLED, s


async def test_a_handler_that_swallows_its_cancellation_and_returns_succeeds(worker: Worker) -> None:
    msg = job("cancel.stubborn", 3)
    running = asyncio.ensure_future(worker.deliver(msg))
    await asyncio.wait_for(STARTED[3].wait(), 10)
    await worker.client.cancel(msg.id)
    out, cancelling = await asyncio.wait_for(running, 5)
    assert out is ACK and SEEN[3] == "swallowed"
    assert cancelling == 0
    s = await worker.client.status(msg.id)
    assert s.state is State.SUCCEEDED and s.result == "done anyway", s


async def test_the_worker_cancelling_the_delivery_still_sends_it_back(worker: Worker) -> None:
    """A drain past its grace period cancels the delivery's task: that cancellation propagates (the
    broker redelivers), even when a task cancel came first."""
    msg = job("cancel.sleep", 4)
    running = asyncio.ensure_future(worker.deliver(msg))
    await asyncio.wait_for(STARTED[4].wait(), 10)
    worker.handles.canceller.cancel(msg.id)  # the cancel of the task, as the watch would call it
    running.cancel()  # ... and the worker's own, before the handler ran again
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_plain_function_sees_ctx_cancelled_and_is_not_retried(worker: Worker) -> None:
    msg = job("cancel.plain", 5)
    running = asyncio.ensure_future(worker.deliver(msg))
    await asyncio.to_thread(SYNC_STARTED[5].wait, 10)
    asked = time.monotonic()
    await worker.client.cancel(msg.id)
    out, cancelling = await asyncio.wait_for(running, 5)
    assert SEEN[5] == "ctx.cancelled" and time.monotonic() - asked < 1.0
    assert out is CANCELLED_RUNNING, out
    assert cancelling == 0


async def test_the_steps_of_each_pipeline(worker: Worker) -> None:
    names: dict[str, Any] = {
        t: [s.name for s in p.steps]
        for t in ("cancel.untracked", "cancel.sleep")
        if (p := worker.runner.pipeline(t)) is not None
    }
    assert names["cancel.untracked"][0] == "cancel" and names["cancel.untracked"][-1] == "handler watch"
    assert "track" not in names["cancel.untracked"] and "track start" not in names["cancel.untracked"]
    assert names["cancel.sleep"][:2] == ["track", "cancel"]
    assert names["cancel.sleep"][-3:] == ["failure", "handler watch", "track start"]


async def test_a_batch_cancel_stops_a_running_handler_it_covers(worker: Worker) -> None:
    """``sluice task cancel --task NAME --before TIME`` reaches a handler already running: the rule's
    notification makes the watch reload, then every running delivery is checked against it."""
    msg = job("cancel.sleep", 6)
    running = asyncio.ensure_future(worker.deliver(msg))
    await asyncio.wait_for(STARTED[6].wait(), 10)
    asked = time.monotonic()
    await worker.client.cancel_batch("cancel.sleep", now_ms() + 60_000)
    out, cancelling = await asyncio.wait_for(running, 5)
    assert out is CANCELLED_RUNNING, out
    assert SEEN[6] == "cancelled" and time.monotonic() - asked < 1.0
    assert cancelling == 0
