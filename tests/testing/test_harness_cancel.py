"""Cancels in sluice.testing: the worker's own cancel steps over the harness's in-memory live cancels."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from sluice import task
from sluice.resilience import FixedBackoff, RetryPolicy
from sluice.testing import CANCELLED, TestWorker
from sluice_worker.outcome import CANCELLED_QUEUED, CANCELLED_RUNNING

RAN: list[str] = []
STARTED = asyncio.Event()


class Job(BaseModel):
    n: int = 0


@task("hc.job")
async def job(p: Job) -> None:
    RAN.append(f"job {p.n}")


@task("hc.flaky", retry=RetryPolicy(max_attempts=5, backoff=FixedBackoff(30.0)))
async def flaky(p: Job) -> None:
    RAN.append("flaky")
    raise ConnectionError("down")


@task("hc.slow", retry=RetryPolicy(max_attempts=5, backoff=FixedBackoff(1.0)))
async def slow(p: Job) -> None:
    STARTED.set()
    await asyncio.Event().wait()  # until cancelled


async def test_a_cancelled_task_is_acked_without_running() -> None:
    RAN.clear()
    async with TestWorker([job]) as w:
        ids = [w.enqueue("hc.job", {"n": i}) for i in range(3)]
        w.cancel(ids[1])
        await w.join()
    assert RAN == ["job 0", "job 2"]
    assert w.history(ids[1]).kinds == [CANCELLED] and w.history(ids[1]).final is CANCELLED_QUEUED
    assert w.counts()["cancelled"] == 1 and w.kinds()["cancelled"] == 1


async def test_a_retry_cancelled_in_its_delay_tier_does_not_run_again() -> None:
    RAN.clear()
    async with TestWorker([flaky]) as w:
        task_id = w.enqueue("hc.flaky")
        await w.advance(1)  # the first attempt failed; the retry waits 30 s in the delay tiers
        w.cancel(task_id)
        await w.join()
    assert RAN == ["flaky"]
    assert w.history(task_id).kinds == ["retried", "cancelled"]


async def test_a_running_async_handler_is_cancelled_and_not_retried() -> None:
    STARTED.clear()
    async with TestWorker([slow]) as w:
        task_id = w.enqueue("hc.slow")
        running = asyncio.create_task(w.join())
        await asyncio.wait_for(STARTED.wait(), 5)
        w.cancel(task_id)
        await asyncio.wait_for(running, 5)
    assert w.history(task_id).outcomes == [CANCELLED_RUNNING]  # its retry policy does not apply


async def test_a_batch_cancel_by_name_and_publish_time() -> None:
    RAN.clear()
    async with TestWorker([job]) as w:
        before = [w.enqueue("hc.job", {"n": i}, delay=60) for i in range(2)]
        await w.advance(1)
        w.cancels.cancel_batch("hc.job", round(w.fake.time() * 1000))
        after = w.enqueue("hc.job", {"n": 9})
        await w.join()
    assert RAN == ["job 9"]
    assert [w.history(i).kinds for i in before] == [["cancelled"], ["cancelled"]]
    assert w.history(after).kinds == ["acked"]
