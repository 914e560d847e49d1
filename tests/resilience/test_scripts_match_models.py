"""The Lua scripts against the reference models, on generated schedules, on the real Redis.

The scripts take the clock override (a test-only ARGV) so the same schedule drives both; replies
must be equal, field for field (the arithmetic is the same doubles in the same order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.resilience import ConcurrencyLimiter, GCRALimiter, KeySpace, Rate, SlidingWindowLimiter, _lua
from sluice.resilience._limiter import RateLimiterBase
from sluice.resilience._reference import GCRAModel, LeaseModel, SlidingWindowModel

EPOCH = 1_700_000_000_000_000
Schedule = list[tuple[int, int, bool]]
steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400_000), st.integers(min_value=0, max_value=5), st.booleans()
    ),
    min_size=1,
    max_size=60,
)
rates = st.builds(
    Rate,
    st.integers(min_value=1, max_value=1_000),
    st.sampled_from([0.001, 0.25, 1.0, 3.0, 60.0]),
)
slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def on_redis(url: str, body: Callable[[Redis, KeySpace], Awaitable[list[str]]]) -> None:
    """Run ``body`` in a fresh loop with its own client and key prefix; delete the keys it names after
    (by name: a SCAN per example would crawl through whatever else the shared server holds)."""

    async def main() -> None:
        client = Redis.from_url(url)
        space = KeySpace(f"sluicetest:{uuid.uuid4().hex[:12]}")
        written: list[str] = []
        try:
            written = await body(client, space)
        finally:
            if written:
                await client.delete(*written)
            await client.aclose()

    asyncio.run(main())


async def replay(limiter: RateLimiterBase, model: GCRAModel | SlidingWindowModel, schedule: Schedule) -> None:
    """Drive the script and the model with the same schedule; every reply must be equal."""
    now = EPOCH
    for gap, cost, peek in schedule:
        now += gap
        assert list(await limiter._call("k", cost, peek, now_us=now)) == list(model.decide(now, cost, peek))


@slow
@given(rate=rates, burst=st.integers(min_value=1, max_value=10), schedule=steps)
def test_gcra_script_matches_model(redis_url: str, rate: Rate, burst: int, schedule: Schedule) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        limiter = GCRALimiter(client, rate, burst=burst, keys=keys)
        await replay(limiter, GCRAModel(limiter._emission, limiter._tau), schedule)
        return [limiter.key("k")]

    on_redis(redis_url, body)


@slow
@given(rate=rates, schedule=steps)
def test_window_script_matches_model(redis_url: str, rate: Rate, schedule: Schedule) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        limiter = SlidingWindowLimiter(client, rate, keys=keys)
        await replay(limiter, SlidingWindowModel(rate.period_us, rate.limit), schedule)
        return [limiter.key("k")]

    on_redis(redis_url, body)


lease_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=300_000),
        st.sampled_from(["acquire", "acquire", "renew", "release"]),
        st.integers(min_value=0, max_value=8),
    ),
    min_size=1,
    max_size=60,
)


@slow
@given(limit=st.integers(min_value=1, max_value=4), ops=lease_ops)
def test_lease_scripts_match_model(redis_url: str, limit: int, ops: list[tuple[int, str, int]]) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        sem = ConcurrencyLimiter(client, limit, lease=1.0, keys=keys)
        model = LeaseModel(limit, 1_000_000)
        granted: list[int] = []
        now = EPOCH
        for gap, op, pick in ops:
            now += gap
            if op == "acquire":
                reply = list(await sem._call_acquire("k", now_us=now))
                assert reply == list(model.acquire(now))
                if reply[0] == 1:
                    granted.append(reply[1])
            elif granted:
                token = granted[pick % len(granted)]
                leases_key = sem.keys_of("k")[0]
                if op == "renew":
                    got = await sem._runner.run(_lua.LEASE_RENEW, [leases_key], [now, 1_000_000, token])
                    assert got == model.renew(now, token)
                else:
                    await client.zrem(leases_key, token)
                    model.release(token)
        return list(sem.keys_of("k"))

    on_redis(redis_url, body)
