"""GCRA and sliding-window limiters: the public API, TTLs, key layout, batching.

Each test runs on the real Redis and on the in-memory backend (on a FakeClock: no real-time wait).
"""

from __future__ import annotations

import asyncio
import math

import pytest
from redis.crc import key_slot

from sluice.resilience import (
    Decision,
    GCRALimiter,
    KeySpace,
    Rate,
    RateLimited,
    SlidingWindowLimiter,
)

from .conftest import Store


async def test_try_acquire_admits_the_burst_then_refuses_with_retry_after(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_second(10), burst=3, keys=store.keys)
    decisions = []
    for _ in range(4):
        decisions.append(await limiter.try_acquire("stripe"))
        await store.elapse(0.000_01)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    # one token every 100 ms: the refused call fits again within 100 ms of the third admission
    assert 0 < refused.retry_after <= 0.1
    assert refused.server_time_us > decisions[0].server_time_us


async def test_cost_counts_units_and_over_burst_never_fits(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_second(10), burst=5, keys=store.keys)
    assert (await limiter.try_acquire("k", cost=4)).remaining == 1
    assert not (await limiter.try_acquire("k", cost=2)).allowed
    never = await limiter.try_acquire("k", cost=6)
    assert not never.allowed
    assert math.isinf(never.retry_after)
    with pytest.raises(RateLimited) as info:
        await limiter.acquire("k", cost=6)
    assert math.isinf(info.value.retry_after)


async def test_peek_takes_nothing_and_reset_refills(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_minute(2), burst=2, keys=store.keys)
    assert (await limiter.peek("k")).remaining == 1
    assert (await limiter.peek("k")).remaining == 1
    await limiter.try_acquire("k")
    await limiter.try_acquire("k")
    assert not (await limiter.peek("k")).allowed
    await limiter.reset("k")
    assert (await limiter.try_acquire("k")).allowed


async def test_acquire_waits_for_a_token(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_second(50), burst=1, keys=store.keys)
    first = await limiter.acquire("k")

    async def inside() -> Decision:
        async with limiter.acquire("k", max_wait=2.0) as decision:
            return decision

    second = await store.drive(inside())
    assert second.allowed
    # the second admission came one emission interval (20 ms) or more after the first, by Redis' clock
    assert second.server_time_us - first.server_time_us >= 20_000


async def test_acquire_gives_up_after_max_wait(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_minute(1), burst=1, keys=store.keys)
    await limiter.acquire("k")
    with pytest.raises(RateLimited) as info:
        await store.drive(limiter.acquire("k", max_wait=0.05))
    assert 50 < info.value.retry_after <= 60


async def test_every_key_has_a_ttl_and_a_hash_tag(store: Store) -> None:
    gcra = GCRALimiter(store.client, Rate.per_second(5), keys=store.keys)
    window = SlidingWindowLimiter(store.client, Rate.per_second(5), keys=store.keys)
    await gcra.try_acquire("tenant-a")
    await window.try_acquire("tenant-a")
    expected = [gcra.key("tenant-a"), window.key("tenant-a")]
    for key in expected:  # read the TTLs at once: a 5/s key lives well under a second
        assert 0 < await store.pttl(key) <= 3_000
        assert "{tenant-a}" in key
    # nothing else was written under the prefix (a SCAN over a busy Redis may outlast the keys)
    assert await store.written() <= set(expected)
    assert key_slot(gcra.key("tenant-a").encode()) == key_slot(b"{tenant-a}")


async def test_sliding_window_admits_the_quota_per_window(store: Store) -> None:
    limiter = SlidingWindowLimiter(store.client, Rate(5, 60.0), keys=store.keys)
    decisions = [await limiter.try_acquire("k") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].retry_after > 0
    assert (await limiter.peek("k")).remaining == 0


@pytest.mark.parametrize("kind", [GCRALimiter, SlidingWindowLimiter])
async def test_coalesced_calls_share_pipelines_and_stay_exact(
    store: Store, kind: type[GCRALimiter] | type[SlidingWindowLimiter]
) -> None:
    """300 concurrent calls against a quota of 100: exactly 100 admitted, whether batched or not."""
    async with kind(store.client, Rate.per_minute(100), keys=store.keys, coalesce=True) as batched:
        plain = kind(store.client, Rate.per_minute(100), keys=store.keys)
        got: list[Decision] = await asyncio.gather(*(batched.try_acquire("b") for _ in range(300)))
        assert sum(d.allowed for d in got) == 100
        coalescer = batched._coalescer
        assert coalescer is not None
        # the first call went alone, the other 299 shared a few pipelines
        assert coalescer.sent_alone == 1
        assert coalescer.batched_calls == 299
        assert coalescer.batches <= 4
        got = await asyncio.gather(*(plain.try_acquire("p") for _ in range(300)))
        assert sum(d.allowed for d in got) == 100


async def test_a_lone_caller_does_not_wait_for_a_batch(store: Store) -> None:
    async with GCRALimiter(store.client, Rate.per_minute(100), keys=store.keys, coalesce=True) as batched:
        for _ in range(5):
            assert (await batched.try_acquire("solo")).allowed
        assert batched._coalescer is not None
        assert (batched._coalescer.sent_alone, batched._coalescer.batches) == (5, 0)


async def test_names_are_independent(store: Store) -> None:
    limiter = GCRALimiter(store.client, Rate.per_minute(1), burst=1, keys=store.keys)
    assert (await limiter.try_acquire("a")).allowed
    assert not (await limiter.try_acquire("a")).allowed
    assert (await limiter.try_acquire("b")).allowed


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        Rate(0)
    with pytest.raises(ValueError, match="prefix"):
        KeySpace("a{b}")
    with pytest.raises(ValueError, match="empty"):
        KeySpace().key("gcra", "")
