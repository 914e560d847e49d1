"""CancelWatch: loads the live cancels and rules at start, is fed by the channel, reloads after a
reconnect of its subscription and every ``resync`` seconds; expired cancels stop counting; a check makes
no Redis call (it still answers with the server gone)."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from resilience.conftest import ThrowawayRedis
from sluice.handles import CancelWatch, TaskHandles
from support.waiting import eventually


async def test_loads_at_start_then_follows_the_channel(
    redis: Redis, prefix: str, handles: TaskHandles
) -> None:
    await handles.cancel("before-start")
    await handles.cancel_batch("demo.batch", 2_000)
    heard: list[str] = []
    async with CancelWatch(redis, prefix) as watch:
        watch.on_cancel(heard.append)
        await watch.start()
        assert watch.live and watch.loads >= 1
        assert watch.is_cancelled("before-start", "demo.x", None)
        assert not watch.is_cancelled("other", "demo.x", 1_000)
        assert watch.is_cancelled("other", "demo.batch", 1_999)  # the rule: published before 2000
        assert not watch.is_cancelled("other", "demo.batch", 2_000)
        assert not watch.is_cancelled("other", "demo.batch", None)
        await handles.cancel("later-1", "later-2")
        await eventually(lambda: watch.is_cancelled("later-2", "demo.x", None), within=2, what="the cancel")
        assert watch.is_cancelled("later-1", "demo.x", None)
        assert heard == ["later-1", "later-2"]
        await handles.cancel_batch("demo.other", 5_000)
        await eventually(lambda: watch.is_cancelled("x", "demo.other", 4_000), within=2, what="the rule")


async def test_expired_cancels_drop_out(redis: Redis, prefix: str) -> None:
    async with (
        TaskHandles(redis, prefix, ttl=1.0) as short,
        CancelWatch(redis, prefix, resync=0.2) as watch,
    ):
        await watch.start()
        await short.cancel("brief")
        await short.cancel_batch("demo.brief", 10**13)
        await eventually(lambda: watch.is_cancelled("brief", "demo.x", None), within=2, what="the cancel")
        await eventually(lambda: watch.is_cancelled("y", "demo.brief", 1), within=2, what="the rule")
        await eventually(
            lambda: not watch.is_cancelled("brief", "demo.x", None) and watch.size == 0,
            within=5,
            what="the expired cancel and rule gone from the view",
        )
        assert not watch.is_cancelled("y", "demo.brief", 1)


async def test_periodic_resync_reads_what_no_message_said(redis: Redis, prefix: str) -> None:
    async with CancelWatch(redis, prefix, resync=0.2) as watch:
        await watch.start()
        expiry = (time.time() + 60) * 1000
        await redis.zadd(watch.keys.cancels, {"silent": expiry})  # written without a notification
        await eventually(lambda: watch.is_cancelled("silent", "demo.x", None), within=3, what="the resync")


async def test_resync_after_the_subscription_reconnects(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with CancelWatch(client, "p", resync=3600, retry=0.1) as watch:
            await watch.start()
            loads = watch.loads
            await client.zadd(watch.keys.cancels, {"missed": (time.time() + 60) * 1000})  # no message
            assert not watch.is_cancelled("missed", "demo.x", None)
            await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await eventually(lambda: watch.loads > loads, within=5, what="a reload after the reconnect")
            assert watch.is_cancelled("missed", "demo.x", None) and watch.live
    finally:
        await client.aclose()


async def test_a_check_makes_no_redis_call(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    try:
        async with TaskHandles(client, "p") as handles, CancelWatch(client, "p") as watch:
            await handles.cancel("gone")
            await handles.cancel_batch("demo.batch", 2_000)
            await watch.start()
            throwaway_redis.kill()  # nothing answers any more: a check that asked Redis would fail or hang
            started = time.perf_counter()
            for _ in range(10_000):
                assert watch.is_cancelled("gone", "demo.x", None)
                assert watch.is_cancelled("n", "demo.batch", 1)
                assert not watch.is_cancelled("n", "demo.x", 1)
            assert time.perf_counter() - started < 1.0
            await asyncio.sleep(0)
    finally:
        await client.aclose()


async def test_start_with_redis_down_does_not_fail(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    throwaway_redis.kill()
    try:
        async with CancelWatch(client, "p", timeout=0.3, retry=0.1) as watch:
            await asyncio.wait_for(watch.start(), 5)
            assert not watch.live and not watch.is_cancelled("x", "demo.x", None)
            throwaway_redis.start()
            async with TaskHandles(client, "p") as handles:
                await eventually(lambda: watch.live, within=10, what="the subscription once Redis is back")
                await handles.cancel("after")
                await eventually(lambda: watch.is_cancelled("after", "t", None), within=5, what="the cancel")
    finally:
        await client.aclose()
