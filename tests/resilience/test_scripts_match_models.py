"""The Lua scripts against the reference models, on generated schedules, on the real Redis.

The scripts take the clock override (a test-only ARGV) so the same schedule drives both; replies
must be equal, field for field (the arithmetic is the same doubles in the same order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.resilience import (
    BreakerPolicy,
    CircuitBreaker,
    ConcurrencyLimiter,
    GCRALimiter,
    IdempotencyStore,
    KeySpace,
    Rate,
    RetryBudget,
    SlidingWindowLimiter,
    _lua,
)
from sluice.resilience._limiter import RateLimiterBase
from sluice.resilience._reference import (
    BreakerModel,
    BudgetModel,
    ClaimModel,
    GCRAModel,
    LeaseModel,
    SlidingWindowModel,
)

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


breaker_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4_000_000),
        st.sampled_from(["allow", "ok", "fail", "trial-ok", "trial-fail"]),
    ),
    min_size=1,
    max_size=60,
)
breaker_policies = st.builds(
    BreakerPolicy,
    failure_rate=st.sampled_from([0.1, 0.5, 0.75, 1.0]),
    minimum_calls=st.integers(min_value=1, max_value=6),
    window=st.sampled_from([1.0, 5.0, 10.0]),
    buckets=st.integers(min_value=1, max_value=10),
    open_for=st.sampled_from([0.5, 2.0, 5.0]),
    half_open_permits=st.integers(min_value=1, max_value=3),
    trial_timeout=st.sampled_from([None, 1.0, 3.0]),
)


@slow
@given(policy=breaker_policies, ops=breaker_ops)
def test_breaker_scripts_match_model(
    redis_url: str, policy: BreakerPolicy, ops: list[tuple[int, str]]
) -> None:
    """allow and record (closed counting, opening, half-open rounds, stalled trials) reply for reply."""

    async def body(client: Redis, keys: KeySpace) -> list[str]:
        breaker = CircuitBreaker(client, "k", policy, keys=keys)
        permits, trial_us, _ = breaker._allow_args
        bucket_us, buckets, minimum, rate, open_us, _, _ = breaker._record_args
        model = BreakerModel()
        now = EPOCH
        for gap, op in ops:
            now += gap
            if op == "allow":
                got = await breaker._call_allow(now_us=now)
                assert list(got) == list(model.allow(now, int(permits), int(trial_us)))
                continue
            success, trial = op.endswith("ok"), op.startswith("trial")
            got = await breaker._call_record(success, trial, now_us=now)
            want = model.record(
                now,
                success,
                trial,
                bucket_us=int(bucket_us),
                buckets=int(buckets),
                minimum_calls=int(minimum),
                failure_rate=float(rate),
                open_us=int(open_us),
                permits=int(permits),
            )
            assert list(got) == list(want)
        return [breaker.key]

    on_redis(redis_url, body)


budget_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=1_500_000),
        st.sampled_from(["call", "retry", "retry"]),
        st.integers(min_value=1, max_value=20),
    ),
    min_size=1,
    max_size=60,
)


@slow
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.1, 0.3, 1.0, 10.0]),
    window=st.integers(min_value=1, max_value=10),
    ops=budget_ops,
)
# the boundary: 2 calls at ratio 1 and no floor leave exactly 2 retries
@example(
    ratio=1.0, floor=0.0, window=5, ops=[(0, "call", 2), (0, "retry", 1), (0, "retry", 1), (0, "retry", 1)]
)
def test_budget_script_matches_model(
    redis_url: str, ratio: float, floor: float, window: int, ops: list[tuple[int, str, int]]
) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        budget = RetryBudget(client, "k", ratio=ratio, min_per_second=floor, window=window, keys=keys)
        model = BudgetModel()
        now = EPOCH
        for gap, op, n in ops:
            now += gap
            got = list(await budget._call(op, n if op == "call" else 0, now_us=now))
            want = model.call(now, n, window) if op == "call" else model.retry(now, window, ratio, floor)
            assert got == list(want)
        return [budget.key]

    on_redis(redis_url, body)


claim_ops = st.lists(
    st.tuples(
        st.sampled_from(["claim", "claim", "complete", "complete-result", "release", "renew"]),
        st.sampled_from(["a", "b", "c"]),
    ),
    min_size=1,
    max_size=40,
)


@slow
@given(ops=claim_ops)
def test_claim_scripts_match_model(redis_url: str, ops: list[tuple[str, str]]) -> None:
    """claim / complete / release / renew with a few tokens, reply for reply (the lease, 60 s, never ends
    here: a claim's time left is PTTL, on Redis' own clock, so only its kind of answer is compared)."""

    async def body(client: Redis, keys: KeySpace) -> list[str]:
        store = IdempotencyStore(client, keys=keys, lease=60)
        key = store.key("k")
        model = ClaimModel()
        lease_us, ttl_us = 60_000_000, 3_600_000_000
        for op, token in ops:
            run = store._runner.run
            if op == "claim":
                got = await run(_lua.CLAIM, [key], ["", token, lease_us])
                want = model.claim(token)
                if want == (2,):
                    assert got[0] == 2 and 0 < got[1] <= 60_000
                else:
                    assert (got if got == 1 else [got[0], got[1], bytes(got[2])]) == (
                        want if want == 1 else list(want)
                    )
            elif op.startswith("complete"):
                result = b"r-" + token.encode() if op == "complete-result" else None
                args = ["", token, ttl_us, 0 if result is None else 1, result or b""]
                assert await run(_lua.CLAIM_COMPLETE, [key], args) == model.complete(token, result)
            elif op == "release":
                assert await run(_lua.CLAIM_RELEASE, [key], ["", token]) == model.release(token)
            else:
                assert await run(_lua.CLAIM_RENEW, [key], ["", token, lease_us]) == model.renew(token)
        return [key]

    on_redis(redis_url, body)
