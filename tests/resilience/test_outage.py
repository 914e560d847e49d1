"""SCRIPT FLUSH, a Redis restart, a Redis that never answers: primitives keep working or follow their policy.

These run on a throwaway redis-server of their own, never on the shared one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sluice.resilience import (
    BackendUnavailable,
    CircuitBreaker,
    Claimed,
    ConcurrencyLimiter,
    FailClosed,
    FailOpen,
    GCRALimiter,
    IdempotencyStore,
    KeySpace,
    Rate,
    RetryBudget,
    SlidingWindowLimiter,
)

from .conftest import ThrowawayRedis

KEYS = KeySpace("outage")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(throwaway_redis: ThrowawayRedis) -> AsyncIterator[Redis]:
    c = Redis.from_url(throwaway_redis.url)
    yield c
    await c.aclose()


async def test_script_flush_during_use_breaks_nothing(client: Redis) -> None:
    gcra = GCRALimiter(client, Rate.per_minute(100), keys=KEYS)
    batched = GCRALimiter(client, Rate.per_minute(100), keys=KEYS, coalesce=True)
    window = SlidingWindowLimiter(client, Rate.per_minute(100), keys=KEYS)
    sem = ConcurrencyLimiter(client, 2, keys=KEYS)
    breaker = CircuitBreaker(client, "svc", keys=KEYS)
    store = IdempotencyStore(client, keys=KEYS)
    budget = RetryBudget(client, "svc", keys=KEYS)

    async def use_all(round_: int) -> None:
        assert (await gcra.try_acquire("a")).remaining == 99 - round_
        got = await asyncio.gather(*(batched.try_acquire("b") for _ in range(10)))
        assert sum(d.allowed and not d.degraded for d in got) == 10
        assert (await window.try_acquire("a")).allowed
        async with sem.acquire("a") as lease:
            assert lease.token > 0
        async with breaker.guard():
            pass
        assert isinstance(await store.claim(f"job-{round_}"), Claimed)
        assert await budget.try_retry()

    await use_all(0)
    assert await client.script_flush() is True
    await use_all(1)
    assert await client.script_flush() is True
    await use_all(2)
    for primitive in (gcra, batched, window, sem, breaker, store, budget):
        assert primitive.outage_stats.failed_calls == 0
    await batched.aclose()


async def test_restart_fail_open_uses_the_local_limit_logs_once_and_recovers(
    throwaway_redis: ThrowawayRedis, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sluice.resilience")
    clock = FakeClock()  # local time only: the local limiter and the probe spacing
    limiter = GCRALimiter(
        client,
        Rate.per_second(1_000),
        burst=100,
        keys=KEYS,
        timeout=0.3,
        outage=FailOpen(local_share=0.1, probe_interval=0.05),
        clock=clock,
    )
    assert not (await limiter.try_acquire("api")).degraded
    throwaway_redis.kill()
    # down: decisions come from the local limit, a tenth of the global one (burst 10, 100/s)
    local = [await limiter.try_acquire("api") for _ in range(30)]
    assert all(d.degraded for d in local)
    assert sum(d.allowed for d in local) == 10
    clock.now += 0.05  # 50 ms later the local bucket has 5 more
    assert sum([(await limiter.try_acquire("api")).allowed for _ in range(10)]) == 5
    assert limiter.outage_stats.outages == 1
    assert limiter.outage_stats.fallback_decisions == 40
    throwaway_redis.start()
    for _ in range(200):  # bounded: until a probe finds Redis back
        clock.now += 0.05
        decision = await limiter.try_acquire("api")
        if not decision.degraded:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the limiter never went back to Redis")
    assert decision.allowed
    assert limiter.outage_stats.outages == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "sluice.resilience"]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


async def test_fail_closed_refuses_quickly_everywhere(throwaway_redis: ThrowawayRedis, client: Redis) -> None:
    closed = FailClosed(probe_interval=10)
    gcra = GCRALimiter(client, Rate.per_second(10), keys=KEYS, timeout=0.3, outage=closed)
    sem = ConcurrencyLimiter(client, 1, keys=KEYS, timeout=0.3, outage=closed)
    breaker = CircuitBreaker(client, "svc", keys=KEYS, timeout=0.3, outage=closed)
    store = IdempotencyStore(client, keys=KEYS, timeout=0.3, outage=closed)
    budget = RetryBudget(client, "svc", keys=KEYS, timeout=0.3, outage=closed)
    throwaway_redis.kill()
    started = time.monotonic()
    decision = await gcra.try_acquire("a")
    assert not decision.allowed
    assert decision.degraded
    with pytest.raises(BackendUnavailable):
        await gcra.acquire("a")
    with pytest.raises(BackendUnavailable):
        async with sem.acquire("a"):
            pytest.fail("a fail-closed semaphore granted a slot without Redis")
    with pytest.raises(BackendUnavailable):
        await breaker.allow()
    with pytest.raises(BackendUnavailable):
        await store.claim("a")
    assert not await budget.try_retry()
    # each primitive tried Redis once (bounded by its 0.3 s timeout, enforced within 1.25x), then refused
    assert time.monotonic() - started < 5 * 0.3 * 1.25 + 1.0
    for primitive in (gcra, sem, breaker, store, budget):
        assert primitive.outage_stats.outages == 1
        assert primitive.outage_stats.failed_calls == 1


async def test_fail_open_primitives_keep_going_locally(
    throwaway_redis: ThrowawayRedis, client: Redis
) -> None:
    opened = FailOpen(local_share=0.5, probe_interval=10)
    sem = ConcurrencyLimiter(client, 4, keys=KEYS, timeout=0.3, outage=opened)
    breaker = CircuitBreaker(client, "svc", keys=KEYS, timeout=0.3, outage=opened)
    store = IdempotencyStore(client, keys=KEYS, timeout=0.3, outage=opened)
    window = SlidingWindowLimiter(client, Rate.per_minute(10), keys=KEYS, timeout=0.3, outage=opened)
    throwaway_redis.kill()
    async with sem.acquire("a") as one, sem.acquire("a") as two:
        assert one.local and two.local
        assert (await sem.try_acquire("a"))[0] is None  # local limit: half of 4
    async with breaker.guard() as permit:
        assert permit.local
    claim = await store.claim("job")
    assert isinstance(claim, Claimed)
    assert not isinstance(await store.claim("job"), Claimed)  # still deduplicated within this process
    await store.complete("job", claim.token, b"r")
    assert [(await window.try_acquire("w")).allowed for _ in range(6)] == [True] * 5 + [False]


class Silent:
    """A TCP server that accepts and reads but never answers: a hung Redis."""

    def __init__(self) -> None:
        self.port = 0
        self.got_request = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read(1):
            self.got_request.set()
        await reader.read()
        writer.close()


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    hung = Silent()
    server = await asyncio.start_server(hung.handle, "127.0.0.1", 0)
    hung.port = server.sockets[0].getsockname()[1]
    yield hung
    server.close()
    await server.wait_closed()


async def test_a_redis_that_never_answers_costs_one_timeout_not_a_hang(silent: Silent) -> None:
    client = Redis(host="127.0.0.1", port=silent.port)
    limiter = GCRALimiter(
        client, Rate.per_second(10), keys=KEYS, timeout=0.2, outage=FailOpen(probe_interval=10)
    )
    started = time.monotonic()
    first = await limiter.try_acquire("a")
    assert first.degraded
    assert first.allowed
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    for _ in range(20):
        await limiter.try_acquire("a")
    assert time.monotonic() - started < 0.1  # no further timeouts until the next probe
    await client.aclose()


async def test_a_cancellation_from_outside_is_never_turned_into_a_timeout(silent: Silent) -> None:
    """The deadline watchdog converts only its own cancellations; the caller's propagate."""
    client = Redis(host="127.0.0.1", port=silent.port)
    limiter = GCRALimiter(client, Rate.per_second(10), keys=KEYS, timeout=5.0)
    task = asyncio.create_task(limiter.try_acquire("a"))
    await asyncio.wait_for(silent.got_request.wait(), timeout=10)  # the call is waiting for a reply
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.outage_stats.failed_calls == 0
    # our own deadline, in this task, becomes an outage and leaves the task's cancellation count alone
    quick = GCRALimiter(client, Rate.per_second(10), keys=KEYS, timeout=0.1, outage=FailClosed())
    assert (await quick.try_acquire("a")).degraded
    assert quick.outage_stats.failed_calls == 1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await client.aclose()
