"""Batching (``_coalesce.Coalescer``) on the real Redis: lone calls go at once, small batches linger, close flushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from sluice.resilience import KeySpace, _lua
from sluice.resilience._coalesce import Coalescer
from sluice.resilience._scripts import Call, ScriptRunner


def _claim(keys: KeySpace, i: int) -> Call:
    return (_lua.CLAIM, [keys.key("idem", f"{{c{i}}}")], ["", f"t{i}", 30_000_000])


Lingering = Callable[[float], Coalescer]


@pytest.fixture
async def lingering(redis: Redis) -> AsyncIterator[Lingering]:
    """Coalescers as the idempotency store makes them (one batch on the wire, 32 or linger), closed after."""
    runner = ScriptRunner(redis)
    made: list[Coalescer] = []

    def make(linger: float) -> Coalescer:
        made.append(Coalescer(runner, multi=_lua.MULTI, max_inflight=1, min_batch=32, linger=linger))
        return made[-1]

    yield make
    for c in made:
        await c.aclose()
    await runner.aclose()


async def test_a_lone_call_never_lingers(lingering: Lingering, keys: KeySpace) -> None:
    c = lingering(30.0)
    async with asyncio.timeout(5):  # a lingering call would wait 30 s
        for i in range(5):
            assert await c.call(_claim(keys, i)) == 1
    assert c.sent_alone == 5 and c.batches == 0


async def test_under_load_batches_reach_min_batch(lingering: Lingering, keys: KeySpace) -> None:
    c = lingering(30.0)
    async with asyncio.timeout(5):
        got = await asyncio.gather(*(c.call(_claim(keys, i)) for i in range(1 + 3 * 32)))
    assert got == [1] * 97
    # the first goes alone; the 96 queued behind it go in batches of at least 32, none lingered 30 s
    assert c.sent_alone == 1 and c.batched_calls == 96
    assert 1 <= c.batches <= 3


async def test_a_small_batch_waits_for_its_linger_then_goes(lingering: Lingering, keys: KeySpace) -> None:
    c = lingering(0.2)
    started = time.monotonic()
    async with asyncio.timeout(5):
        got = await asyncio.gather(*(c.call(_claim(keys, i)) for i in range(4)))
    waited = time.monotonic() - started
    assert got == [1] * 4
    assert c.sent_alone == 1 and c.batches == 1 and c.batched_calls == 3
    assert waited >= 0.2, "three calls are fewer than min_batch: they lingered"


async def test_close_sends_what_lingers(lingering: Lingering, keys: KeySpace) -> None:
    c = lingering(30.0)
    lone = asyncio.ensure_future(c.call(_claim(keys, 0)))
    await asyncio.sleep(0)  # the lone call is on the wire
    queued = [c.submit(_claim(keys, i)) for i in range(1, 4)]
    async with asyncio.timeout(5):
        await c.aclose()
        assert await lone == 1
        assert [await f for f in queued] == [1, 1, 1]


def test_bad_batching_settings_are_refused() -> None:
    runner = ScriptRunner.__new__(ScriptRunner)  # never used: the settings are checked first
    with pytest.raises(ValueError, match="min_batch"):
        Coalescer(runner, max_batch=8, min_batch=9)
    with pytest.raises(ValueError, match="linger"):
        Coalescer(runner, linger=-1.0)
