"""The hot path's transport: connections kept out of the client's pool, error replies, failures."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from sluice.resilience import FailClosed, GCRALimiter, IdempotencyStore, KeySpace, Rate
from sluice.resilience._wire import pack, wire_for

from .conftest import ThrowawayRedis

# A script that keeps Redis busy for about 0.3 s (Redis runs one script at a time).
_BUSY = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000000 + tonumber(t[2]) + 300000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
return 1
"""


def test_pack_is_resp() -> None:
    assert pack(["EVALSHA", "ab", 1, "k", "", 2.5, b"\x00"]) == (
        b"*7\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$0\r\n\r\n$3\r\n2.5\r\n$1\r\n\x00\r\n"
    )
    assert pack(["SET", "é"]) == b"*2\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n"


async def test_every_primitive_on_a_client_shares_one_free_list(redis: Redis, keys: KeySpace) -> None:
    limiter = GCRALimiter(redis, Rate.per_second(1000), keys=keys)
    store = IdempotencyStore(redis, keys=keys)
    assert limiter._runner._wire is not None
    assert limiter._runner._wire is store._runner._wire is wire_for(redis)


async def test_connections_kept_are_few_and_go_back_on_close(redis_url: str, keys: KeySpace) -> None:
    client = Redis.from_url(redis_url)
    pool = client.connection_pool
    try:
        async with GCRALimiter(client, Rate.per_second(10_000), keys=keys) as limiter:
            got = await asyncio.gather(*(limiter.try_acquire("k") for _ in range(64)))
            assert all(d.allowed for d in got)
            kept = len(pool._in_use_connections)
            assert 1 <= kept <= 8
            # the client's own commands still find room: 64 at once on a pool of 100
            assert all(await asyncio.gather(*(client.ping() for _ in range(64))))
        assert len(pool._in_use_connections) == 0
    finally:
        await client.aclose()


async def test_a_small_pool_is_shared_not_exhausted(redis_url: str, keys: KeySpace) -> None:
    """300 decisions at once on a pool of 4 connections: they wait for each other, none fails."""
    client = Redis.from_url(redis_url, max_connections=4)
    try:
        async with GCRALimiter(client, Rate.per_minute(100), keys=keys) as limiter:
            got = await asyncio.gather(*(limiter.try_acquire("k") for _ in range(300)))
            assert sum(d.allowed for d in got) == 100
            assert not any(d.degraded for d in got)
            assert limiter.outage_stats.failed_calls == 0
    finally:
        await client.aclose()


# (a single-connection client takes execute_command too, but redis-py 8.1 leaves its socket open
# after aclose(), which the warnings-as-errors setting would blame on this test)
@pytest.mark.parametrize("kind", ["blocking", "decoded"])
async def test_other_clients_work_too(redis_url: str, keys: KeySpace, kind: str) -> None:
    if kind == "blocking":
        client = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=4))
    else:
        client = Redis.from_url(redis_url, decode_responses=True)
    try:
        limiter = GCRALimiter(client, Rate.per_minute(10), keys=keys)
        assert (limiter._runner._wire is None) == (kind != "decoded")
        got = [await limiter.try_acquire("k") for _ in range(12)]
        assert [d.allowed for d in got] == [True] * 10 + [False] * 2
        assert got[9].remaining == 0 and got[10].retry_after > 0
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_is_replaced_without_an_outage(
    redis_url: str, keys: KeySpace, unique: str
) -> None:
    client = Redis.from_url(redis_url, client_name=f"wire-{unique}")
    admin = Redis.from_url(redis_url)
    try:
        limiter = GCRALimiter(client, Rate.per_minute(100), keys=keys)
        assert (await limiter.try_acquire("k")).remaining == 99
        mine = [c for c in await admin.client_list() if c["name"] == f"wire-{unique}"]
        assert mine, "the limiter's connection is open"
        for c in mine:
            await admin.client_kill_filter(_id=c["id"])
        decision = await limiter.try_acquire("k")
        assert decision.allowed and not decision.degraded and decision.remaining == 98
        assert limiter.outage_stats.failed_calls == 0
    finally:
        await admin.aclose()
        await client.aclose()


async def test_a_reply_that_came_too_late_is_never_read_by_the_next_call(
    redis_url: str, keys: KeySpace
) -> None:
    """A call cut off by its deadline drops its connection, so its late reply cannot answer another."""
    client = Redis.from_url(redis_url)
    blocker = Redis.from_url(redis_url)
    try:
        limiter = GCRALimiter(
            client, Rate.per_minute(100), keys=keys, timeout=0.1, outage=FailClosed(probe_interval=0.05)
        )
        busy = asyncio.create_task(blocker.eval(_BUSY, 0))
        late = await limiter.try_acquire("probe")
        while not late.degraded and not busy.done():  # until a call meets the busy server
            late = await limiter.try_acquire("probe")
        assert late.degraded and not late.allowed, "a call was cut off by its deadline"
        assert await busy == 1  # the server is free again, more than probe_interval later
        # the next call must read its own reply: a full bucket for a fresh name, not the late
        # reply about "probe"
        fresh = await limiter.try_acquire("fresh")
        assert fresh.allowed and not fresh.degraded and fresh.remaining == 99
        assert limiter.outage_stats.outages == 1
    finally:
        await blocker.aclose()
        await client.aclose()


async def test_a_flushed_script_is_loaded_again_while_every_pooled_connection_is_busy(
    throwaway_redis: ThrowawayRedis,
) -> None:
    """NOSCRIPT with the whole pool held by the limiter's own calls: the script is loaded on the connection
    that got the NOSCRIPT (the pool has none left to lend), and no decision is lost."""
    client = Redis.from_url(throwaway_redis.url, max_connections=4)
    try:
        async with GCRALimiter(client, Rate.per_second(100_000), keys=KeySpace("flush")) as limiter:
            assert (await limiter.try_acquire("k")).allowed
            await client.script_flush()
            got = await asyncio.gather(*(limiter.try_acquire("k") for _ in range(64)))
            assert all(d.allowed and not d.degraded for d in got)
            assert limiter.outage_stats.failed_calls == 0
    finally:
        await client.aclose()
