"""The exact sliding window (``SlidingLogLimiter``): its model's guarantees on a fake clock, the script
against the model on the real Redis, the public API on both backends, and what a key costs in memory."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from sluice.errors import ConfigError
from sluice.resilience import Decision, GCRALimiter, KeySpace, Rate, RateLimited, SlidingLogLimiter, _lua
from sluice.resilience._reference import SlidingLogModel

from .conftest import Store
from .test_scripts_match_models import EPOCH, on_redis

periods = st.integers(min_value=1, max_value=3_000)
limits = st.integers(min_value=1, max_value=8)
# gaps may be negative: the server clock going back must not widen the window
arrivals = st.lists(
    st.tuples(st.integers(min_value=-500, max_value=2_000), st.integers(min_value=0, max_value=4)),
    min_size=1,
    max_size=80,
)
slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def most_in_a_window(stamps: list[int], period: int) -> int:
    """The most stamps in any closed interval [s, s + period] (both ends in it)."""
    stamps = sorted(stamps)
    most, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] < t - period:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def replay(model: SlidingLogModel, gaps: list[tuple[int, int]]) -> list[int]:
    """The stamps of every unit admitted on the schedule (one per unit of cost)."""
    now, stamps = EPOCH, []
    for gap, cost in gaps:
        now += gap
        allowed, _, _, stamp = model.decide(now, cost)
        if allowed:
            stamps += [stamp] * cost
    return stamps


@given(periods, limits, arrivals)
def test_no_window_of_the_period_ever_holds_more_than_the_limit(
    period: int, limit: int, gaps: list[tuple[int, int]]
) -> None:
    stamps = replay(SlidingLogModel(period, limit), gaps)
    assert stamps == sorted(stamps)  # stamps never go back, whatever the clock does
    assert most_in_a_window(stamps, period) <= limit


@given(periods, limits, arrivals)
def test_what_fits_is_admitted_and_retry_after_is_exact(
    period: int, limit: int, gaps: list[tuple[int, int]]
) -> None:
    """Never stricter than it must be: a call is refused only if admitting it would break the bound; and a
    refused call fits at t + retry_after, not one µs earlier (if nothing else is admitted)."""
    model = SlidingLogModel(period, limit)
    now = EPOCH
    for gap, cost in gaps:
        now += gap
        before = list(model.stamps)
        allowed, retry, remaining, t = model.decide(now, cost)
        window = [s for s in before if s >= t - period]
        assert bool(allowed) == (len(window) + cost <= limit)
        if allowed:
            assert remaining == limit - len(window) - cost
            continue
        assert remaining == max(0, limit - len(window))
        if cost > limit:
            assert retry == -1
            continue
        assert retry >= 1
        assert SlidingLogModel(period, limit, list(model.stamps)).decide(t + retry, cost, peek=True)[0] == 1
        assert (
            SlidingLogModel(period, limit, list(model.stamps)).decide(t + retry - 1, cost, peek=True)[0] == 0
        )


log_steps = st.lists(
    st.tuples(
        st.integers(min_value=-300_000, max_value=700_000),
        st.integers(min_value=0, max_value=5),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)
rates = st.builds(Rate, st.integers(min_value=1, max_value=20), st.sampled_from([0.001, 0.25, 1.0, 3.0]))


@slow
@given(rate=rates, schedule=log_steps)
@example(rate=Rate(2, 1.0), schedule=[(0, 1, False), (0, 1, False), (0, 1, False), (1_000_000, 1, False)])
def test_sliding_script_matches_model(
    redis_url: str, rate: Rate, schedule: list[tuple[int, int, bool]]
) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        limiter = SlidingLogLimiter(client, rate, keys=keys)
        model = SlidingLogModel(rate.period_us, rate.limit)
        now = EPOCH
        for gap, cost, peek in schedule:
            now += gap
            assert await limiter._call("k", cost, peek, now_us=now) == list(model.decide(now, cost, peek))
        return [limiter.key("k")]

    on_redis(redis_url, body)


settle_steps = st.lists(
    st.tuples(
        st.integers(min_value=-300_000, max_value=700_000),  # gap
        st.integers(min_value=0, max_value=3),  # cost of a decision
        st.integers(
            min_value=-1, max_value=8
        ),  # then settle the i-th logged stamp (-1: none; past the end: one gone)
    ),
    min_size=1,
    max_size=50,
)


@slow
@given(rate=rates, margin=st.integers(min_value=0, max_value=400_000), schedule=settle_steps)
@example(
    rate=Rate(2, 1.0), margin=200_000, schedule=[(0, 1, -1), (0, 1, -1), (500_000, 0, 0), (800_000, 1, -1)]
)
def test_settle_script_matches_model(
    redis_url: str, rate: Rate, margin: int, schedule: list[tuple[int, int, int]]
) -> None:
    """Decisions and settles interleaved, the script on Redis and the model: the same replies and the
    same stamps in the log after each step (the server clock fixed by the test, also going back)."""

    async def body(client: Redis, keys: KeySpace) -> list[str]:
        window = rate.period_us + margin
        limiter = SlidingLogLimiter(client, rate, margin=margin / 1e6, keys=keys)
        model = SlidingLogModel(window, rate.limit)
        key = limiter.key("k")
        now = EPOCH
        for gap, cost, settle in schedule:
            now += gap
            assert await limiter._call("k", cost, False, now_us=now) == list(model.decide(now, cost))
            if settle < 0:
                continue
            stamp = model.stamps[settle] if settle < len(model.stamps) else now - 10 * window
            # EVAL, not EVALSHA: a fresh Redis may not hold the script yet
            reply = await client.eval(_lua.SLIDING_SETTLE.source, 1, key, now, f"{stamp} {margin} {window}")
            assert list(map(int, reply.split())) == list(model.settle(now, stamp, margin))
            scores = [int(s) for _, s in await client.zrange(key, 0, -1, withscores=True)]
            assert scores == model.stamps
        return [key]

    on_redis(redis_url, body)


async def test_a_settled_unit_counts_a_period_from_its_calls_end(store: Store) -> None:
    """Rate 1/s, margin 0.25 s: a unit settled 0.5 s after its admission leaves the window 1 s after
    the settle, not 1.25 s after the admission; settling a fast unit (within the margin) changes nothing."""
    limiter = SlidingLogLimiter(store.client, Rate(1, 1.0), margin=0.25, keys=store.keys)
    first = await limiter._call("k", 1, False, now_us=EPOCH)
    assert first[0] == 1
    runner = limiter._runner
    window = 1_250_000
    assert await runner.run(
        _lua.SLIDING_SETTLE, [limiter.key("k")], [EPOCH + 100_000, f"{EPOCH} 250000 {window}"]
    )
    refused = await limiter._call("k", 1, False, now_us=EPOCH + 1_000_000)
    assert refused[:2] == [0, 250_001], "within the margin: the admission stamp holds"
    await runner.run(_lua.SLIDING_SETTLE, [limiter.key("k")], [EPOCH + 500_000, f"{EPOCH} 250000 {window}"])
    refused = await limiter._call("k", 1, False, now_us=EPOCH + 1_400_000)
    assert refused[:2] == [0, 100_001], "settled 0.5 s in: it leaves 1 s after that"
    assert (await limiter._call("k", 1, False, now_us=EPOCH + 1_500_001))[0] == 1
    assert await limiter.settle("k", 0) is False, "an outage's decision has no unit to settle"


async def test_admits_the_limit_then_refuses_until_the_oldest_leaves(store: Store) -> None:
    limiter = SlidingLogLimiter(store.client, Rate(3, 60.0), keys=store.keys)
    first = await limiter.try_acquire("api")
    await store.elapse(0.01)
    decisions = [await limiter.try_acquire("api") for _ in range(3)]
    assert [first.allowed] + [d.allowed for d in decisions] == [True, True, True, False]
    assert [first.remaining, decisions[0].remaining, decisions[1].remaining] == [2, 1, 0]
    refused = decisions[2]
    # exact: the first admission leaves the window at its stamp + 60 s + 1 µs
    want = (first.server_time_us + 60_000_001 - refused.server_time_us) / 1e6
    assert refused.retry_after == pytest.approx(want, abs=1e-6)
    assert 59.9 < refused.retry_after <= 60.0
    assert not refused.frozen


async def test_cost_peek_reset_and_a_cost_over_the_limit(store: Store) -> None:
    limiter = SlidingLogLimiter(store.client, Rate(5, 10.0), keys=store.keys)
    assert (await limiter.try_acquire("k", cost=4)).remaining == 1
    assert not (await limiter.try_acquire("k", cost=2)).allowed
    assert (await limiter.peek("k")).remaining == 0  # what would be left after taking it, as GCRA's peek
    assert (await limiter.peek("k")).allowed  # a peek takes nothing
    never = await limiter.try_acquire("k", cost=6)
    assert not never.allowed and math.isinf(never.retry_after)
    with pytest.raises(RateLimited):
        await limiter.acquire("k", cost=6)
    await limiter.reset("k")
    assert (await limiter.try_acquire("k", cost=5)).allowed


async def test_acquire_waits_exactly_for_the_window(store: Store) -> None:
    limiter = SlidingLogLimiter(store.client, Rate(2, 0.2), keys=store.keys)
    a = await limiter.acquire("k")
    b = await limiter.acquire("k")
    c = await store.drive(limiter.acquire("k", max_wait=2.0))
    assert a.allowed and b.allowed and c.allowed
    assert c.server_time_us - a.server_time_us > 200_000  # a left the closed window [c - 0.2 s, c]


async def test_the_key_has_a_ttl_and_a_hash_tag(store: Store) -> None:
    limiter = SlidingLogLimiter(store.client, Rate(5, 2.0), keys=store.keys)
    await limiter.try_acquire("tenant-a", cost=2)
    key = limiter.key("tenant-a")
    assert key == f"{store.keys.prefix}:sliding:{{tenant-a}}"
    assert 2_000 < await store.pttl(key) <= 3_001  # the period, plus keep's second
    assert key_slot(key.encode()) == key_slot(b"{tenant-a}")
    assert await store.written() <= {key}


async def test_coalesced_calls_stay_exact(store: Store) -> None:
    async with SlidingLogLimiter(store.client, Rate(100, 60.0), keys=store.keys, coalesce=True) as lim:
        got: list[Decision] = await asyncio.gather(*(lim.try_acquire("b") for _ in range(300)))
        assert sum(d.allowed for d in got) == 100
        assert lim._coalescer is not None and lim._coalescer.batched_calls == 299


async def test_memory_per_key_at_ten_thousand_a_minute(redis: Redis, keys: KeySpace) -> None:
    """What the docstring says a full 10,000/min log costs (MEMORY USAGE, printed with -s)."""
    limiter = SlidingLogLimiter(redis, Rate.per_minute(10_000), keys=keys, timeout=5.0)
    gcra = GCRALimiter(redis, Rate.per_minute(10_000), keys=keys)
    for _ in range(100):
        assert (await limiter.try_acquire("full", cost=100)).allowed
    await gcra.try_acquire("full")
    assert not (await limiter.try_acquire("full")).allowed
    assert await redis.zcard(limiter.key("full")) == 10_000
    used = await redis.memory_usage(limiter.key("full"), samples=0)
    one = await redis.memory_usage(gcra.key("full"), samples=0)
    assert used is not None and one is not None
    print(f"sliding log at 10,000/min: {used} bytes per name ({used / 10_000:.0f} per entry); GCRA key {one}")
    assert 300_000 < used < 2_000_000


async def test_a_margin_widens_the_window(store: Store) -> None:
    limiter = SlidingLogLimiter(store.client, Rate(1, 1.0), margin=0.25, keys=store.keys)
    first = await limiter.try_acquire("k")
    refused = await limiter.try_acquire("k")
    assert not refused.allowed
    want = (first.server_time_us + 1_250_001 - refused.server_time_us) / 1e6
    assert refused.retry_after == pytest.approx(want, abs=1e-6)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ConfigError):
            SlidingLogLimiter(store.client, Rate(1, 1.0), margin=bad)
