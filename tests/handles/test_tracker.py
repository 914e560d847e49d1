"""Tracker: writes from concurrent tasks share round trips; with Redis down it fails open (counted, logged
once, nothing raised into the caller) and status says the backend is unavailable."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from redis.asyncio import Redis

from resilience.conftest import ThrowawayRedis
from sluice.errors import ConfigError
from sluice.handles import ErrorInfo, State, TaskHandles, Tracker, TrackingUnavailable
from sluice.handles._keys import HandleKeys
from sluice.handles._writes import write_call
from sluice.handles.state import RANK
from sluice.resilience._wire import Packed, bulk
from sluice.resilience.clock import FakeClock
from support.waiting import eventually


async def test_concurrent_writes_are_batched(redis: Redis, prefix: str, handles: TaskHandles) -> None:
    ids = [uuid.uuid4().hex for _ in range(300)]
    async with Tracker(redis, prefix, worker="h:1") as tracker:
        for i in ids:
            tracker.running(i, task="demo.x", queue="default", attempt=1)
        await asyncio.gather(*(tracker.ended(i, state=State.SUCCEEDED, attempt=1) for i in ids))
        batches = tracker._batches
        stats = tracker.stats
        await eventually(lambda: stats.applied == stats.writes, within=5, what="every write's answer counted")
        # one write a task when its start had not left yet (folded into the end), else two
        assert stats.failures == 0 and 300 <= stats.writes < 600, stats
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


async def test_a_start_not_sent_yet_is_folded_into_the_end(
    redis: Redis, prefix: str, handles: TaskHandles
) -> None:
    """A short task's running write still queued when it ends is not sent: its end stands for both
    (``started`` stamped as long before the end as the start was, by the tracker's clock; both history
    entries). A start that left already is followed by its own end; a retry folds the same way."""
    clock = FakeClock(start=1_000.0)
    async with Tracker(redis, prefix, worker="h:1", clock=clock) as tracker:
        short, long_, retried = (uuid.uuid4().hex for _ in range(3))
        tracker.running(short, task="demo.x", queue="default", attempt=1)
        clock.advance(0.25)
        await tracker.ended(short, state=State.SUCCEEDED, attempt=1)
        assert tracker.stats.writes == tracker.stats.applied == 1
        done = await handles.status(short)
        assert done.state is State.SUCCEEDED and done.worker == "h:1"
        assert done.started_ms is not None and done.finished_ms is not None
        assert done.finished_ms - done.started_ms == 250
        assert [(t.state, t.at_ms) for t in done.history] == [
            (State.RUNNING, done.started_ms),  # its detail: the worker, as a running write says
            (State.SUCCEEDED, done.finished_ms),
        ]
        assert done.history[0].detail == "h:1"
        tracker.running(long_, task="demo.x", queue="default", attempt=1)
        await eventually(lambda: _in(handles, long_, State.RUNNING), within=5, what="the start sent alone")
        await tracker.ended(long_, state=State.SUCCEEDED, attempt=1)
        assert [t.state for t in (await handles.status(long_)).history] == [State.RUNNING, State.SUCCEEDED]
        tracker.running(retried, task="demo.x", queue="default", attempt=1)
        tracker.retrying(retried, attempt=1, error=ErrorInfo("ValueError", "boom"), next_run_ms=5)
        await eventually(lambda: _in(handles, retried, State.RETRYING), within=5, what="the retry")
        got = await handles.status(retried)
        assert got.started_ms is not None and [t.state for t in got.history] == [
            State.RUNNING,
            State.RETRYING,
        ]
        assert tracker.stats.writes == 4 and tracker.stats.failures == 0  # short 1, long 2, retried 1


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
                lambda: stats.applied + stats.ignored == stats.writes, within=5, what="every answer counted"
            )
            assert 300 <= stats.writes < 600, stats  # the starts still queued were folded into the ends
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


async def _in(handles: TaskHandles, task_id: str, state: State) -> object:
    status = await handles.status(task_id)
    return status if status.state is state else None


async def test_a_start_is_held_for_running_after_then_written(
    redis: Redis, prefix: str, handles: TaskHandles
) -> None:
    """With ``running_after`` a task's running write waits that long (by the tracker's clock, checked by a
    loop timer): a task that ends sooner costs one write (its end stands for the start); a longer one shows
    ``running`` once the time has passed; closing the tracker writes the starts still held."""
    clock = FakeClock(start=1_000.0)
    tracker = Tracker(redis, prefix, worker="h:1", clock=clock, running_after=0.05)
    try:
        short, long_, left = (uuid.uuid4().hex for _ in range(3))
        tracker.running(short, task="demo.x", queue="default", attempt=1)
        tracker.running(long_, task="demo.x", queue="default", attempt=1)
        clock.advance(0.03)
        await asyncio.sleep(0.1)  # the timer fired (real time), but by the tracker's clock nothing is due
        assert tracker.stats.writes == 0
        assert (await handles.status(long_)).state is State.UNKNOWN
        await tracker.ended(short, state=State.SUCCEEDED, attempt=1)
        assert tracker.stats.writes == 1  # the short task's end, standing for its start
        done = await handles.status(short)
        assert done.finished_ms is not None and done.started_ms == done.finished_ms - 30
        assert [t.state for t in done.history] == [State.RUNNING, State.SUCCEEDED]
        clock.advance(0.03)  # long_ has run 60 ms: due
        await eventually(lambda: _in(handles, long_, State.RUNNING), within=5, what="the held start written")
        await tracker.ended(long_, state=State.SUCCEEDED, attempt=1)
        assert tracker.stats.writes == 3
        tracker.running(left, task="demo.x", queue="default", attempt=1)
    finally:
        await tracker.aclose()
    assert tracker.stats.writes == 4 and tracker.stats.failures == 0
    assert (await handles.status(left)).state is State.RUNNING  # written by aclose


def test_running_after_must_not_be_negative(redis: Redis) -> None:
    with pytest.raises(ConfigError, match="running_after"):
        Tracker(redis, "p", worker="h:1", running_after=-1)


@pytest.mark.parametrize("state", sorted(RANK, key=lambda s: s.value))
@pytest.mark.parametrize("result", [None, b"", b'{"a":"\xc3\xa9"}'])
@pytest.mark.parametrize("ran_ms", [None, 7])
def test_a_writes_prepacked_bytes_are_its_arguments(
    state: State, result: bytes | None, ran_ms: int | None
) -> None:
    """``write_call`` builds its keys' and arguments' RESP in one format each (``Packed``): the bytes must
    be those of packing each item in turn, for every state, with and without a result and a folded start
    (non-ASCII ids, details and fields included: lengths are of the encoded bytes)."""
    _, ks, avs = write_call(
        HandleKeys("pfx"),
        "id-é1",
        state,
        generation=1,
        attempt=2,
        ttl=3.0,
        detail="line\nbreak é",
        fields={"worker": "hôte:1"},
        info={"task": "t"},
        result=result,
        ran_ms=ran_ms,
    )
    assert isinstance(ks, Packed) and isinstance(avs, Packed)
    assert ks.resp == b"".join(map(bulk, ks))
    assert avs.resp == b"".join(map(bulk, avs))
