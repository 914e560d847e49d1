"""Fleet-wide freezes (``Freezes``) and the rate limiters honouring them in their own script.

On both backends (the real Redis and the in-memory one on a FakeClock), plus the scripts against the
model on generated schedules.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.errors import ConfigError
from sluice.resilience import (
    FailOpen,
    FakeClock,
    Freezes,
    GCRALimiter,
    KeySpace,
    MemoryBackend,
    Rate,
    SlidingLogLimiter,
    SlidingWindowLimiter,
    _lua,
)
from sluice.resilience._memory import MemoryRunner
from sluice.resilience._reference_adaptive import FreezeModel
from sluice.resilience._scripts import ScriptRunner

from .conftest import Store
from .test_scripts_match_models import EPOCH, on_redis

KINDS = [GCRALimiter, SlidingWindowLimiter, SlidingLogLimiter]
Kind = type[GCRALimiter] | type[SlidingWindowLimiter] | type[SlidingLogLimiter]


async def test_freeze_keeps_the_later_end_and_counts(store: Store) -> None:
    freezes = Freezes(store.client, keys=store.keys)
    first = await freezes.freeze("api", 30.0, reason="429 from api")
    assert first is not None and 29.9 < first.remaining <= 30.0 and first.count == 1
    shorter = await freezes.freeze("api", 5.0, reason="shorter")
    assert shorter is not None
    assert shorter.until_us == first.until_us and shorter.reason == "429 from api" and shorter.count == 2
    longer = await freezes.freeze("api", 60.0, reason="longer")
    assert longer is not None and longer.until_us > first.until_us and longer.reason == "longer"
    assert longer.count == 3
    assert 60 < await store.pttl(freezes.key("api")) / 1000 <= 61  # the key ends a second after the freeze
    got = await freezes.get("api")
    assert got is not None and got.until_us == longer.until_us and got.count == 3
    assert isinstance(got.until, datetime) and got.until.tzinfo is UTC


async def test_a_freeze_in_the_past_does_nothing_and_thaw_ends_one(store: Store) -> None:
    freezes = Freezes(store.client, keys=store.keys)
    assert await freezes.freeze("api", 0.0) is None
    wall = store.clock.time() if store.clock is not None else time.time()
    assert await freezes.freeze("api", datetime.fromtimestamp(wall, UTC) - timedelta(minutes=5)) is None
    assert await freezes.get("api") is None
    assert await freezes.thaw("api") is False
    await freezes.freeze("api", 10.0)
    assert await freezes.thaw("api") is True
    assert await freezes.get("api") is None
    assert await store.written() == set()


async def test_freezes_are_capped_and_bad_ends_refused(store: Store) -> None:
    freezes = Freezes(store.client, keys=store.keys, max_freeze=120.0)
    capped = await freezes.freeze("api", 10 * 86_400.0)
    assert capped is not None and 119 < capped.remaining <= 120.0
    for bad in (math.nan, "soon", True):
        with pytest.raises(ConfigError):
            await freezes.freeze("api", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Freezes(store.client, max_freeze=math.inf)


async def test_frozen_lists_every_freeze_in_force_with_its_time_left(store: Store) -> None:
    freezes = Freezes(store.client, keys=store.keys)
    await freezes.freeze("b-api", 20.0, reason="b")
    await freezes.freeze("a-api", 10.0, reason="a")
    await freezes.freeze("gone", 0.001)
    await store.elapse(0.05)
    listed = await freezes.frozen()
    assert [(f.name, f.reason) for f in listed] == [("a-api", "a"), ("b-api", "b")]
    assert 9 < listed[0].remaining < 10 and 19 < listed[1].remaining < 20


async def test_a_datetime_end_is_read_against_the_wall_clock() -> None:
    clock = FakeClock(start=1_800_000_000.0)
    freezes = Freezes(MemoryBackend(clock=clock), keys=KeySpace("mem"))
    moment = datetime.fromtimestamp(1_800_000_042.0, UTC)
    assert freezes.seconds_until(moment) == 42.0
    assert freezes.seconds_until(moment.replace(tzinfo=None)) == 42.0  # naive: UTC
    got = await freezes.freeze("api", moment)
    assert got is not None and got.remaining == 42.0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_limiter_refuses_a_frozen_name_in_its_own_script_and_takes_nothing(
    store: Store, kind: Kind
) -> None:
    freezes = Freezes(store.client, keys=store.keys)
    limiter = kind(store.client, Rate(2, 60.0), keys=store.keys)
    await freezes.freeze("api", 30.0)
    d = await limiter.try_acquire("api", freeze="api")
    assert not d.allowed and d.frozen and 29 < d.retry_after <= 30.0 and d.remaining == 0
    assert (await limiter.peek("api", freeze="api")).frozen
    unfrozen = await limiter.try_acquire("api")  # without freeze= a freeze is not read
    assert unfrozen.allowed and not unfrozen.frozen
    await freezes.thaw("api")
    after = await limiter.try_acquire("api", freeze="api")
    assert after.allowed and not after.frozen and after.remaining == 0  # the frozen calls took nothing
    # a freeze under another name (a scope) is read just the same
    await freezes.freeze("api.example.com", 5.0)
    assert (await limiter.peek("other", freeze="api.example.com")).frozen


@pytest.mark.parametrize("kind", KINDS)
async def test_frozen_decisions_through_the_batch_path(store: Store, kind: Kind) -> None:
    """Coalesced (the multi script on Redis): frozen names refused, others decided as before."""
    freezes = Freezes(store.client, keys=store.keys)
    await freezes.freeze("t1", 10.0)
    async with kind(store.client, Rate(50, 60.0), keys=store.keys, coalesce=True) as lim:
        got = await asyncio.gather(*(lim.try_acquire(f"t{i % 2}", freeze=f"t{i % 2}") for i in range(60)))
    frozen = [d for i, d in enumerate(got) if i % 2 == 1]
    free = [d for i, d in enumerate(got) if i % 2 == 0]
    assert all(d.frozen and not d.allowed for d in frozen)
    assert sum(d.allowed for d in free) == 30 and not any(d.frozen for d in free)


async def test_acquire_waits_a_freeze_out() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    freezes = Freezes(backend, keys=KeySpace("mem"))
    limiter = SlidingLogLimiter(backend, Rate(5, 1.0), keys=KeySpace("mem"))
    await freezes.freeze("api", 3.0)
    started = clock.monotonic()
    store = Store("memory", backend, KeySpace("mem"), clock)
    d = await store.drive(limiter.acquire("api", freeze="api"))
    assert d.allowed and clock.monotonic() - started == pytest.approx(3.0)


async def test_fail_open_keeps_honouring_a_freeze_it_saw() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    freezes = Freezes(backend, keys=KeySpace("mem"))
    limiter = GCRALimiter(backend, Rate(10, 1.0), keys=KeySpace("mem"), outage=FailOpen(local_share=0.5))
    await freezes.freeze("api", 5.0)
    assert (await limiter.try_acquire("api", freeze="api")).frozen
    backend.available = False
    during = await limiter.try_acquire("api", freeze="api")
    assert during.degraded and during.frozen and not during.allowed and during.retry_after == 5.0
    assert (await limiter.try_acquire("other", freeze="other")).allowed  # no freeze seen: local limit
    clock.advance(5.0)
    assert (await limiter.try_acquire("api", freeze="api")).allowed


freeze_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3_000_000),
        st.sampled_from(["freeze", "freeze", "read"]),
        st.integers(min_value=-1_000_000, max_value=5_000_000),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=freeze_ops)
def test_freeze_scripts_match_model(redis_url: str, ops: list[tuple[int, str, int]]) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        freezes = Freezes(client, keys=keys)
        key, model, now = freezes.key("k"), FreezeModel(), EPOCH
        for i, (gap, op, delta) in enumerate(ops):
            now += gap
            if op == "freeze":
                got = await freezes._runner.run(_lua.FREEZE, [key], [now, delta, f"r{i}"])
                extended, until, count, reason, at = got
                assert [extended, until, count, reason.decode(), at] == list(
                    model.freeze(now, delta, f"r{i}")
                )
            else:
                until, count, reason, at = await freezes._runner.run(_lua.FREEZE_READ, [key], [now])
                assert [until, count, reason.decode(), at] == list(model.read(now))
        return [key]

    on_redis(redis_url, body)


@pytest.mark.parametrize("script", ["gcra", "window", "sliding_log"])
async def test_the_frozen_reply_is_the_same_on_both_backends(
    redis: Redis, keys: KeySpace, script: str
) -> None:
    """Reply for reply (the clock override on both): frozen, then after the freeze's end, decided."""
    code = {"gcra": _lua.GCRA, "window": _lua.WINDOW, "sliding_log": _lua.SLIDING_LOG}[script]
    params = {"gcra": "100000 300000 1 0", "window": "1000000 3 1 0", "sliding_log": "1000000 3 1 0"}[script]
    limit_key, freeze_key = keys.key("x", "k"), keys.key("freeze", "k")
    redis_runner, memory_runner = ScriptRunner(redis), MemoryRunner(MemoryBackend(clock=FakeClock()))
    try:
        replies = []
        for runner in (redis_runner, memory_runner):
            got = [await runner.run(_lua.FREEZE, [freeze_key], [EPOCH, 2_500_000, "r"])]
            for at in (EPOCH, EPOCH + 2_499_999, EPOCH + 2_500_000, EPOCH + 2_600_000):
                reply = await runner.run(code, [limit_key, freeze_key], [at, params])
                got.append(reply.decode() if isinstance(reply, bytes) else reply)
            replies.append([r if not isinstance(r, list) else [_text(x) for x in r] for r in got])
    finally:
        await redis_runner.aclose()
    assert replies[0] == replies[1]
    assert replies[0][1].endswith(" 1") and replies[0][2].endswith(" 1")  # frozen, to the last µs
    assert not replies[0][3].endswith(" 1") and replies[0][3].startswith("1 ")  # over: decided, admitted


def _text(x: object) -> object:
    return x.decode() if isinstance(x, bytes) else x
