"""A freeze that ends resumes the limit at its rate, not with a burst (issue 14): GCRA's bucket would be
full at a freeze's end, and the fleet would send ``burst`` requests at once into an upstream that has
just throttled it. On both backends, for GCRA and GCRA at the adaptive rate."""

from __future__ import annotations

import asyncio
import time

import pytest

from sluice.resilience import Freezes, GCRALimiter, Rate
from sluice.resilience.adaptive import AdaptiveGCRALimiter, AdaptiveRate

from .conftest import Store

RATE = Rate(100, 1.0)  # burst 100: a full bucket would admit 100 at once


def _limiter(store: Store, adaptive: bool) -> GCRALimiter:
    if adaptive:
        return AdaptiveGCRALimiter(
            store.client, AdaptiveRate(store.client, RATE, keys=store.keys), keys=store.keys
        )
    return GCRALimiter(store.client, RATE, keys=store.keys)


async def _ended(store: Store, freezes: Freezes, seconds: float) -> None:
    """Freeze ``api`` for ``seconds`` and return once it has ended (the FakeClock jumps; Redis' is waited
    for, bounded)."""
    await freezes.freeze("api", seconds)
    if store.clock is not None:
        store.clock.advance(seconds + 0.001)
        return
    deadline = time.monotonic() + seconds + 5
    while await freezes.get("api") is not None:
        assert time.monotonic() < deadline, "the freeze did not end"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("adaptive", [False, True], ids=["gcra", "adaptive"])
async def test_a_backlog_at_a_freezes_end_is_admitted_at_the_rate_not_in_a_burst(
    store: Store, adaptive: bool
) -> None:
    freezes = Freezes(store.client, keys=store.keys)
    limiter = _limiter(store, adaptive)
    await _ended(store, freezes, 0.2)
    start = time.monotonic()
    admitted = [(await limiter.try_acquire("api", freeze="api")).allowed for _ in range(100)]
    took = time.monotonic() - start
    # one unit at the end, then one per 10 ms: on the FakeClock (no time passes) exactly one
    assert admitted[0] is True
    most = 1 if store.clock is not None else 1 + int((took + 0.2) * RATE.limit) + 1
    assert sum(admitted) <= most, (sum(admitted), took)
    if store.clock is not None:
        store.clock.advance(0.01)
        assert (await limiter.try_acquire("api", freeze="api")).allowed, "one more after one interval"


async def test_without_a_freeze_the_bucket_is_full_and_a_thaw_leaves_it_so(store: Store) -> None:
    """The contrast (and what ``sluice limits thaw`` does: it ends the freeze now, the bucket as it is)."""
    freezes = Freezes(store.client, keys=store.keys)
    limiter = GCRALimiter(store.client, RATE, keys=store.keys)
    full = [(await limiter.try_acquire("fresh", freeze="fresh")).allowed for _ in range(100)]
    assert all(full)
    await freezes.freeze("api", 30.0)
    assert (await limiter.try_acquire("api", freeze="api")).frozen
    assert await freezes.thaw("api")
    after = [(await limiter.try_acquire("api", freeze="api")).allowed for _ in range(100)]
    assert all(after), "a thaw: the key's tasks run at once"
