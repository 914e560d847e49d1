"""The in-memory backend and the FakeClock: what the Redis-backed tests cannot show.

No Redis here, and no real-time wait: an hour of the fake clock passes in well under a second.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sluice.resilience import (
    BackendUnavailable,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Claimed,
    ConcurrencyLimiter,
    Done,
    FailClosed,
    FailOpen,
    FakeClock,
    GCRALimiter,
    IdempotencyStore,
    InProgress,
    KeySpace,
    MemoryBackend,
    Rate,
    RetryBudget,
    SystemClock,
)
from sluice.resilience.clock import SYSTEM

KEYS = KeySpace("mem")


async def test_the_fake_clock_moves_only_when_advanced_and_wakes_sleepers_in_order() -> None:
    clock = FakeClock(start=1_000.0, monotonic_start=5.0)
    assert (clock.time(), clock.monotonic()) == (1_000.0, 5.0)
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(nap("late", 10)), asyncio.create_task(nap("soon", 1))]
    await clock.until_sleeping(2)
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    assert clock.jump() == 0.5  # to the first deadline
    await asyncio.sleep(0)
    assert woke == ["soon"]
    clock.advance(100)
    await asyncio.gather(*tasks)
    assert woke == ["soon", "late"]
    assert (clock.time(), clock.monotonic()) == (1_101.0, 106.0)
    assert clock.sleepers == 0


def test_the_system_clock_is_the_standard_library_itself() -> None:
    """No wrapper on the Redis path: a primitive's default clock is time.monotonic, not a call around it."""
    assert isinstance(SYSTEM, SystemClock)
    assert SYSTEM.monotonic is time.monotonic
    assert SYSTEM.time is time.time
    assert SYSTEM.sleep is asyncio.sleep


async def test_an_hour_of_limits_and_breakers_runs_in_no_real_time() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    limiter = GCRALimiter(backend, Rate.per_second(10), burst=1, keys=KEYS)
    breaker = CircuitBreaker(
        backend, "svc", BreakerPolicy(minimum_calls=2, open_for=60, half_open_permits=1), keys=KEYS
    )
    began = time.monotonic()
    admitted = 0
    for _ in range(36_000):  # one call every 0.1 s for an hour: each one fits exactly
        admitted += (await limiter.try_acquire("k")).allowed
        clock.advance(0.1)
    assert admitted == 36_000
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            async with breaker.guard():
                _ = 1 / 0
    with pytest.raises(CircuitOpen) as info:
        await breaker.allow()
    assert info.value.retry_after == 60
    clock.advance(60)
    async with breaker.guard() as permit:  # the one trial of the half-open round
        assert permit.trial
    assert await breaker.state() == BreakerState.CLOSED
    assert time.monotonic() - began < 30  # (the CPU's time, not the clock's hour)


async def test_primitives_on_one_backend_share_their_state_as_processes_on_one_redis_do() -> None:
    backend = MemoryBackend(clock=FakeClock())
    one, two = (GCRALimiter(backend, Rate.per_minute(3), keys=KEYS) for _ in range(2))
    got = [await (one if i % 2 else two).try_acquire("k") for i in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    other_prefix = GCRALimiter(backend, Rate.per_minute(3), keys=KeySpace("elsewhere"))
    assert (await other_prefix.try_acquire("k")).allowed
    apart = GCRALimiter(MemoryBackend(clock=FakeClock()), Rate.per_minute(3), keys=KEYS)
    assert (await apart.try_acquire("k")).remaining == 2  # another backend: another "Redis"


async def test_claims_expire_with_their_lease_on_the_fake_clock() -> None:
    clock = FakeClock()
    store = IdempotencyStore(MemoryBackend(clock=clock), lease=30, result_ttl=3600, keys=KEYS)
    first = await store.claim("order")
    assert isinstance(first, Claimed)
    clock.advance(10)
    assert await store.claim("order") == InProgress(20.0)
    clock.advance(20)
    second = await store.claim("order")  # the first holder's lease ran out: taken over
    assert isinstance(second, Claimed)
    await store.complete("order", second.token, b"receipt")
    clock.advance(3599)
    assert await store.claim("order") == Done(b"receipt")
    clock.advance(1)
    assert isinstance(await store.claim("order"), Claimed)  # the result's TTL is over


async def test_an_unavailable_backend_takes_the_outage_policy() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    closed = GCRALimiter(backend, Rate.per_second(100), keys=KEYS)
    opened = GCRALimiter(backend, Rate.per_second(100), keys=KEYS, outage=FailOpen(local_share=0.1))
    budget = RetryBudget(backend, "svc", keys=KEYS, outage=FailClosed())
    sem = ConcurrencyLimiter(backend, 10, keys=KEYS, outage=FailOpen(local_share=0.2))
    backend.available = False
    refused = await closed.try_acquire("k")
    assert (refused.allowed, refused.degraded) == (False, True)
    with pytest.raises(BackendUnavailable):
        await closed.acquire("k")
    local = [await opened.try_acquire("k") for _ in range(11)]  # 10 % of a burst of 100
    assert [d.allowed for d in local] == [True] * 10 + [False]
    assert all(d.degraded for d in local)
    assert not await budget.try_retry()
    leases = [(await sem.try_acquire("db"))[0] for _ in range(3)]
    assert [lease is not None and lease.local for lease in leases] == [True, True, False]
    assert opened.outage_stats.outages == 1
    backend.available = True
    clock.advance(1.0)  # the next probe is due
    back = await opened.try_acquire("k")
    assert back.allowed and not back.degraded
    assert not opened.outage_stats.in_outage


async def test_expired_keys_are_dropped_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    limiter = GCRALimiter(backend, Rate.per_second(1000), keys=KEYS)
    for i in range(10_000):
        await limiter.try_acquire(f"tenant-{i}")
    assert len(backend.keys()) == 10_000
    assert backend.ttl(limiter.key("tenant-0")) == pytest.approx(1.001, abs=0.001)
    clock.advance(2)
    assert backend.keys() == []
    for i in range(5_000):  # the writes sweep what expired
        await limiter.try_acquire(f"other-{i}")
    assert len(backend._store) <= 5_000 + 4_096
