"""The shared circuit breaker: its script on a given clock, the public API, and several processes.

The core cases run on the real Redis and on the in-memory backend (on a FakeClock: no real-time wait).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sluice.resilience import (
    BackendUnavailable,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    KeySpace,
    Permit,
    breaker_states,
)

from .conftest import Store, ThrowawayRedis

HAMMER = Path(__file__).with_name("hammer.py")
T0 = 1_700_000_000_000_000
S = 1_000_000  # one second in µs

POLICY = BreakerPolicy(
    minimum_calls=4, failure_rate=0.5, window=10, buckets=10, open_for=30, half_open_permits=2
)


async def opened_at_t0(store: Store) -> CircuitBreaker:
    """A breaker opened at T0 by four failures (open for 30 s)."""
    breaker = CircuitBreaker(store.client, "svc", POLICY, keys=store.keys)
    for _ in range(4):
        await breaker._call_record(False, False, now_us=T0)
    return breaker


async def test_opens_on_the_failure_rate_once_enough_calls_were_made(store: Store) -> None:
    breaker = CircuitBreaker(store.client, "svc", POLICY, keys=store.keys)
    # 3 failures: rate 100 % but under the minimum of 4 calls
    for _ in range(3):
        assert (await breaker._call_record(False, False, now_us=T0))[0] == BreakerState.CLOSED
    # the 4th call succeeds: 3/4 failed >= 50 %, and the minimum is met
    assert (await breaker._call_record(True, False, now_us=T0 + 1))[0] == BreakerState.OPEN
    allowed, trial, retry_us, state, _ = await breaker._call_allow(now_us=T0 + 10 * S)
    assert (allowed, trial, state) == (0, 0, BreakerState.OPEN)
    assert retry_us == 20 * S + 1


async def test_failures_leave_the_window(store: Store) -> None:
    breaker = CircuitBreaker(store.client, "svc", POLICY, keys=store.keys)
    for _ in range(3):
        await breaker._call_record(False, False, now_us=T0)
    # 11 s later those three failures are out of the 10 s window: 1 failure of 1 call, under the minimum
    assert (await breaker._call_record(False, False, now_us=T0 + 11 * S))[0] == BreakerState.CLOSED
    for i in range(3):
        state = (await breaker._call_record(True, False, now_us=T0 + 11 * S + i))[0]
    assert state == BreakerState.CLOSED  # 1 of 4 failed: 25 %


async def test_half_open_grants_only_the_permits_and_closes_on_their_success(store: Store) -> None:
    breaker = await opened_at_t0(store)
    after = T0 + 31 * S
    grants = [await breaker._call_allow(now_us=after + i) for i in range(5)]
    assert [(g[0], g[1], g[3]) for g in grants] == [(1, 1, 2)] * 2 + [(0, 0, 2)] * 3
    assert (await breaker._call_record(True, True, now_us=after + 10))[0] == BreakerState.HALF_OPEN
    assert (await breaker._call_record(True, True, now_us=after + 11))[0] == BreakerState.CLOSED
    assert (await breaker._call_allow(now_us=after + 12))[:2] == [1, 0]


async def test_a_failed_trial_opens_again_and_stalled_trials_start_a_new_round(store: Store) -> None:
    breaker = await opened_at_t0(store)
    after = T0 + 31 * S
    await breaker._call_allow(now_us=after)
    assert (await breaker._call_record(False, True, now_us=after + 1))[0] == BreakerState.OPEN
    assert (await breaker._call_allow(now_us=after + 2))[0] == 0
    # open again for 30 s; then a round whose trial holders never report
    again = after + 31 * S
    assert (await breaker._call_allow(now_us=again))[:2] == [1, 1]
    assert (await breaker._call_allow(now_us=again + 1))[:2] == [1, 1]
    assert (await breaker._call_allow(now_us=again + 2))[0] == 0
    # after the trial timeout (open_for by default) the permits are handed out afresh
    assert (await breaker._call_allow(now_us=again + 30 * S))[:2] == [1, 1]
    assert 0 < await store.pttl(breaker.key) <= 62_000


async def test_guard_records_outcomes_and_refuses_when_open(store: Store) -> None:
    breaker = CircuitBreaker(store.client, "svc", POLICY, keys=store.keys)

    class Boom(Exception):
        pass

    for _ in range(4):
        with pytest.raises(Boom):
            async with breaker.guard():
                raise Boom
    assert await breaker.state() == BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info:
        async with breaker.guard():
            pytest.fail("an open breaker ran the block")
    assert 29 < info.value.retry_after <= 30
    await breaker.reset()
    assert await breaker.call(asyncio.sleep, 0, "fine") == "fine"


async def test_ignored_errors_count_as_success(store: Store) -> None:
    class NotFound(Exception):
        pass

    policy = BreakerPolicy(minimum_calls=2, ignore=(NotFound,))
    breaker = CircuitBreaker(store.client, "svc", policy, keys=store.keys)
    for _ in range(5):
        with pytest.raises(NotFound):
            async with breaker.guard():
                raise NotFound
    assert await breaker.state() == BreakerState.CLOSED


async def test_an_open_breaker_refuses_without_a_round_trip(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    breaker = CircuitBreaker(client, "svc", POLICY, keys=KeySpace("t"))
    for _ in range(4):
        await breaker.record(Permit(), success=False)
    throwaway_redis.kill()
    # Redis is gone: if the refusal needed a round trip it would be BackendUnavailable instead
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            await breaker.allow()
    assert breaker.outage_stats.failed_calls == 0
    await client.aclose()


async def test_closed_cache_saves_the_allow_round_trip(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    cached = CircuitBreaker(client, "svc", POLICY, keys=KeySpace("t"), closed_cache=60)
    exact = CircuitBreaker(client, "svc", POLICY, keys=KeySpace("t"))
    await cached.allow()
    await exact.allow()
    throwaway_redis.kill()
    assert await cached.allow() == Permit()  # answered from the cache: no round trip, no outage
    assert cached.outage_stats.failed_calls == 0
    with pytest.raises(BackendUnavailable):  # the default asks Redis (and fails closed)
        await exact.allow()
    await client.aclose()


async def run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HAMMER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.slow
async def test_failures_in_one_process_open_it_for_all_and_trials_are_limited(
    redis_url: str, redis: Redis, keys: KeySpace
) -> None:
    # the policy the hammer processes use: 10 calls minimum, open 3 s (long enough for the failing
    # process to exit on a loaded machine before this one asks), 3 half-open permits
    policy = BreakerPolicy(
        minimum_calls=10, failure_rate=0.5, open_for=3.0, half_open_permits=3, trial_timeout=10
    )
    here = CircuitBreaker(redis, "upstream", policy, keys=keys)
    assert (await here.allow()).trial is False  # closed, as seen from this process
    states = json.loads(await run("breaker-fail", redis_url, keys.prefix, "10"))
    assert states[-1] == "OPEN"
    with pytest.raises(CircuitOpen):
        await here.allow()  # opened by the other process's failures (its refusal came from Redis)
    # three processes of ten tasks each ask at once when the open time is over: three trials in all
    trials = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HAMMER),
            "breaker-trial",
            redis_url,
            keys.prefix,
            "10",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for proc in trials:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).strip() == b"ready"
    # wait (bounded) until Redis' clock passes the end of the open time
    for _ in range(1000):
        until = float(await redis.hget(here.key, "until") or 0)
        secs, micros = await redis.time()
        if secs * 1_000_000 + micros >= until:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the open time never ended")
    for proc in trials:  # all three go at once
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    await asyncio.gather(*(proc.stdin.drain() for proc in trials if proc.stdin is not None))
    outcomes = [json.loads((await asyncio.wait_for(proc.communicate(), timeout=30))[0]) for proc in trials]
    assert sum(o["trial"] for o in outcomes) == 3
    assert sum(o["plain"] for o in outcomes) == 0
    assert sum(o["refused"] for o in outcomes) == 27


async def test_breaker_states_lists_what_the_breakers_stored(store: Store) -> None:
    """The dashboards' read (``sluice metrics``): states by name, from the library, not a key pattern."""
    keys = KeySpace(store.keys.prefix + ":[a*]?")  # glob characters in the prefix match only themselves
    opened = CircuitBreaker(store.client, "payments", POLICY, keys=keys)
    trial = CircuitBreaker(store.client, "geo", POLICY, keys=keys)
    fine = CircuitBreaker(store.client, "mail", POLICY, keys=keys)
    for breaker in (opened, trial):
        for _ in range(4):
            await breaker._call_record(False, False, now_us=T0)
    await trial._call_allow(now_us=T0 + 31 * S)  # the open time is over: a half-open round
    await fine.record(Permit(), success=True)
    other = CircuitBreaker(store.client, "payments", POLICY, keys=store.keys)  # another prefix
    await other._call_record(False, False, now_us=T0)
    states = await breaker_states(store.client, keys)
    assert states == {
        "geo": BreakerState.HALF_OPEN,
        "mail": BreakerState.CLOSED,
        "payments": BreakerState.OPEN,
    }
    assert list(states) == sorted(states)
    assert len(await breaker_states(store.client, keys, max_keys=2)) == 2
    await opened.reset()
    assert "payments" not in await breaker_states(store.client, keys)
    assert await breaker_states(store.client, KeySpace(store.keys.prefix + ":none")) == {}
