"""Tracker: writes from concurrent tasks share round trips; with Redis down it fails open (counted, logged
once, nothing raised into the caller) and status says the backend is unavailable."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from resilience.conftest import ThrowawayRedis
from sluice.handles import State, TaskHandles, Tracker, TrackingUnavailable
from support.waiting import eventually


async def test_concurrent_writes_are_batched(redis: Redis, prefix: str, handles: TaskHandles) -> None:
    ids = [uuid.uuid4().hex for _ in range(300)]
    async with Tracker(redis, prefix, worker="h:1") as tracker:
        for i in ids:
            tracker.running(i, task="demo.x", queue="default", attempt=1)
        await asyncio.gather(*(tracker.ended(i, state=State.SUCCEEDED, attempt=1) for i in ids))
        batches = tracker._batches
        await eventually(lambda: tracker.stats.applied == 600, within=5, what="every write's answer counted")
        assert tracker.stats.failures == 0
        assert batches.batches + batches.sent_alone < 20, (batches.batches, batches.sent_alone)
    assert {(await handles.status(i)).state for i in ids} == {State.SUCCEEDED}


async def test_redis_down_fails_open(
    throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = Redis.from_url(throwaway_redis.url)
    seen: list[str] = []
    tracker = Tracker(client, "down", worker="h:1", timeout=0.3, telemetry=seen.append)
    handles = TaskHandles(client, "down", timeout=0.3)
    try:
        await tracker.ended("before", state=State.SUCCEEDED, attempt=1)
        assert (await handles.status("before")).state is State.SUCCEEDED
        throwaway_redis.kill()
        caplog.set_level(logging.WARNING, logger="sluice.handles")
        for n in range(50):
            tracker.running(f"t{n}", task="demo.x", queue="default", attempt=1)
            await tracker.ended(f"t{n}", state=State.SUCCEEDED, attempt=1)  # never raises, never hangs
        stats = tracker.stats
        assert stats.failures >= 100 - 2 and stats.failed >= 1 and stats.dropped >= 90, stats
        assert tracker.in_outage
        assert seen.count("dropped") == stats.dropped and "failed" in seen
        outage_logs = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
        assert len(outage_logs) == 1  # logged once per outage
        with pytest.raises(TrackingUnavailable):
            await handles.status("before")
        # back up: the next probe (one per second) goes through and writes resume
        throwaway_redis.start()
        await eventually(lambda: _write_lands(tracker), within=10, what="writes resuming after the outage")
        assert not tracker.in_outage
    finally:
        await tracker.aclose()
        await handles.aclose()
        await client.aclose()


async def _write_lands(tracker: Tracker) -> bool:
    before = tracker.stats.applied
    await tracker.ended(uuid.uuid4().hex, state=State.SUCCEEDED, attempt=1)
    return tracker.stats.applied > before


async def test_a_batch_is_one_script_call(throwaway_redis: ThrowawayRedis) -> None:
    """On a standalone server a batch of writes is one EVALSHA of the multi script (counted by Redis)."""
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with Tracker(client, "p", worker="h:1") as tracker, TaskHandles(client, "p") as handles:
            await client.config_resetstat()
            ids = [uuid.uuid4().hex for _ in range(300)]
            for i in ids:
                tracker.running(i, task="demo.x", queue="default", attempt=1)
            await asyncio.gather(*(tracker.ended(i, state=State.SUCCEEDED, attempt=1) for i in ids))
            # all answered; on this fresh server the first two batches meet NOSCRIPT and are resent, the
            # second may land first: its ends make the first one's running writes late (ignored, as they should)
            stats = tracker.stats
            await eventually(
                lambda: stats.applied + stats.ignored == 600, within=5, what="every answer counted"
            )
            calls = (await client.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
            assert 0 < calls < 30, calls
            assert {(await handles.status(i)).state for i in ids} == {State.SUCCEEDED}
    finally:
        await client.aclose()


async def test_a_tasks_writes_land_in_order(redis: Redis, prefix: str, handles: TaskHandles) -> None:
    """A task's running and its end go out in order: with two batches on the wire the end could land
    first and the running write be ignored (its ``started_ms`` and history entry lost)."""
    ids = [uuid.uuid4().hex for _ in range(2000)]
    gate = asyncio.Semaphore(16)

    async def run(tracker: Tracker, task_id: str) -> None:
        async with gate:
            tracker.running(task_id, task="demo.x", queue="default", attempt=1)
            await asyncio.sleep(0)
            await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1)

    async with Tracker(redis, prefix, worker="h:1") as tracker:
        await asyncio.gather(*(run(tracker, i) for i in ids))
        await eventually(
            lambda: tracker.stats.writes == tracker.stats.applied + tracker.stats.ignored, 5, "answers"
        )
        assert tracker.stats.ignored == 0
    statuses = await asyncio.gather(*(handles.status(i) for i in ids))
    assert all(s.started_ms is not None and len(s.history) == 2 for s in statuses)
