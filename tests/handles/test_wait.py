"""wait and result: one subscription per TaskHandles shared by every waiter, woken by the end's
notification (not by polling), a bounded fallback read, and one round trip for a task that has ended."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from redis.asyncio import Connection, Redis

from resilience.conftest import ThrowawayRedis
from sluice.handles import (
    ErrorInfo,
    QueuedInfo,
    ResultTooLarge,
    State,
    TaskCancelled,
    TaskDead,
    TaskFailed,
    TaskHandles,
    Tracker,
    TrackingUnavailable,
    WaitTimeout,
)
from support.waiting import eventually


class CountingConnection(Connection):
    """A connection that counts what it sends: one ``send_packed_command`` is one write to the socket,
    so one round trip (a pipeline is one)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


def new_id() -> str:
    return uuid.uuid4().hex


async def _commandstats(client: Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items() if k != "cmdstat_info"}


async def test_a_finished_task_answers_in_one_round_trip(throwaway_redis: ThrowawayRedis) -> None:
    counted = Redis.from_url(throwaway_redis.url, connection_class=CountingConnection)
    plain = Redis.from_url(throwaway_redis.url)
    try:
        async with Tracker(plain, "p", worker="h:1") as tracker, TaskHandles(counted, "p") as handles:
            task_id = new_id()
            await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1, result_json=b"42")
            await counted.ping()  # the connection is made (its handshake is not the call's cost)
            before_stats = await _commandstats(plain)
            CountingConnection.sends = 0
            status = await handles.wait(task_id, timeout=10)
            assert CountingConnection.sends == 1  # one write to the socket: one round trip
            assert status.state is State.SUCCEEDED and status.result == 42
            after = await _commandstats(plain)
            ran = {k: after.get(k, 0) - before_stats.get(k, 0) for k in after}
            assert {k: v for k, v in ran.items() if v} == {"multi": 1, "hgetall": 1, "lrange": 1, "exec": 1}
            CountingConnection.sends = 0
            assert await handles.result(task_id, timeout=10) == 42
            assert CountingConnection.sends == 1
            assert handles.waiters == 0
    finally:
        await counted.aclose()
        await plain.aclose()


async def test_a_waiter_is_woken_by_the_notification(handles: TaskHandles, tracker: Tracker) -> None:
    """Fallback every 5 s: an answer within a second of the end came from the notification."""
    task_id = new_id()
    await handles.mark_queued([QueuedInfo(task_id, "demo.x", "default", 1)])
    waiting = asyncio.ensure_future(handles.result(task_id, timeout=30))
    await eventually(lambda: handles.waiters == 1, within=5, what="the waiter registered")
    await asyncio.sleep(0.2)  # the waiter is parked on its future, far from its 5 s fallback read
    ended = time.monotonic()
    await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1, result_json=b'{"ok": true}')
    assert await asyncio.wait_for(waiting, 5) == {"ok": True}
    woke = time.monotonic() - ended
    assert woke < 1.0, f"woken {woke:.2f} s after the end: the fallback (5 s), not the notification"
    assert handles.waiters == 0


async def test_an_unknown_id_times_out_at_its_bound(handles: TaskHandles) -> None:
    started = time.monotonic()
    status = await handles.wait(new_id(), timeout=0.6)
    took = time.monotonic() - started
    assert status.state is State.UNKNOWN
    assert 0.55 <= took < 1.5, took
    with pytest.raises(WaitTimeout) as info:
        await handles.result(new_id(), timeout=0.3)
    assert info.value.status.state is State.UNKNOWN
    assert handles.waiters == 0


async def test_the_fallback_read_finds_an_end_without_notification(redis: Redis, prefix: str) -> None:
    """An end written without its notification (a lost message) is found by the fallback read."""
    async with TaskHandles(redis, prefix, fallback=0.3) as handles:
        task_id = new_id()
        waiting = asyncio.ensure_future(handles.wait(task_id, timeout=10))
        await eventually(lambda: handles.waiters == 1, within=5, what="the waiter registered")
        await redis.hset(
            handles.keys.task(task_id), mapping={"state": "failed", "gen": 0, "attempt": 1, "rank": 4}
        )
        status = await asyncio.wait_for(waiting, 5)
        assert status.state is State.FAILED


async def test_many_waiters_share_one_connection(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with TaskHandles(client, "p") as handles, Tracker(client, "p", worker="h:1") as tracker:
            ids = [new_id() for _ in range(200)]
            waits = [asyncio.ensure_future(handles.result(i, timeout=30)) for i in ids]
            await eventually(lambda: handles.waiters == 200, within=10, what="200 waiters")
            listed = await client.client_list(_type="pubsub")
            assert len(listed) == 1  # one subscription for all of them
            for n, i in enumerate(ids):
                await tracker.ended(i, state=State.SUCCEEDED, attempt=1, result_json=str(n).encode())
            assert await asyncio.wait_for(asyncio.gather(*waits), 10) == list(range(200))
            assert handles.waiters == 0
    finally:
        await client.aclose()


async def test_result_raises_by_the_end(handles: TaskHandles, tracker: Tracker) -> None:
    failed, dead, cancelled, big = new_id(), new_id(), new_id(), new_id()
    await tracker.ended(failed, state=State.FAILED, attempt=2, error=ErrorInfo("ValueError", "bad"))
    await tracker.ended(dead, state=State.DEAD, attempt=3, reason="handler_error")
    await handles.cancel(cancelled)
    await tracker.ended(big, state=State.SUCCEEDED, attempt=1, result_error="result too large: 9 bytes > 8")
    with pytest.raises(TaskFailed, match="ValueError: bad") as f:
        await handles.result(failed, timeout=1)
    assert f.value.status.attempt == 2
    with pytest.raises(TaskDead, match="handler_error"):
        await handles.result(dead, timeout=1)
    with pytest.raises(TaskCancelled):
        await handles.result(cancelled, timeout=1)
    with pytest.raises(ResultTooLarge, match="9 bytes > 8"):
        await handles.result(big, timeout=1)


async def test_redis_down_status_and_wait_say_unavailable(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with TaskHandles(client, "p", timeout=0.3, fallback=0.5) as handles:
            task_id = new_id()
            waiting = asyncio.ensure_future(handles.wait(task_id, timeout=30))
            await eventually(lambda: handles.waiters == 1, within=5, what="the waiter registered")
            throwaway_redis.kill()
            for call in (handles.status(task_id), handles.cancel(task_id), handles.claim_unique("k", "i", 1)):
                with pytest.raises(TrackingUnavailable):
                    await call
            # the waiter's next read (woken by the lost subscription or its fallback) says so too
            with pytest.raises(TrackingUnavailable):
                await asyncio.wait_for(waiting, 10)
    finally:
        await client.aclose()


async def test_a_reconnect_wakes_the_waiters(throwaway_redis: ThrowawayRedis) -> None:
    """An end published while the subscription is down is lost: the reconnect makes every waiter read."""
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with TaskHandles(client, "p", fallback=60) as handles:
            task_id = new_id()
            waiting = asyncio.ensure_future(handles.wait(task_id, timeout=30))
            await eventually(lambda: handles.waiters == 1, within=5, what="the waiter registered")
            await client.hset(
                handles.keys.task(task_id), mapping={"state": "dead", "gen": 0, "attempt": 1, "rank": 4}
            )
            await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            status = await asyncio.wait_for(waiting, 10)
            assert status.state is State.DEAD
    finally:
        await client.aclose()
