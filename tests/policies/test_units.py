"""Units taken ahead: tasks arriving together share one decision; held units expire unused."""

from __future__ import annotations

import asyncio

import pytest

from sluice.resilience import Decision, FakeClock
from sluice_worker._unit_batches import UnitBatches


async def test_tasks_arriving_together_share_one_decision_per_batch() -> None:
    clock = FakeClock()
    units = UnitBatches(0.005, clock=clock)
    asked: list[int] = []

    async def decide(n: int) -> Decision:
        asked.append(n)
        await asyncio.sleep(0)  # on the wire: the other tasks arrive meanwhile
        return Decision(True, 0.0, 1000)

    got = await asyncio.gather(*(units.take("k", 64, decide) for _ in range(200)))
    assert all(got)
    assert asked == [64] * 4  # 200 tasks: ceil(200 / 64) decisions, not 200


async def test_units_unused_past_the_hold_are_dropped() -> None:
    clock = FakeClock()
    units = UnitBatches(0.005, clock=clock)
    asked: list[int] = []

    async def decide(n: int) -> Decision:
        asked.append(n)
        return Decision(True, 0.0, 1000)

    assert await units.take("k", 10, decide)
    assert await units.take("k", 10, decide)
    assert asked == [10]
    clock.advance(0.006)  # the 8 units left are stale now
    assert await units.take("k", 10, decide)
    assert asked == [10, 10]
    assert await units.take("other", 10, decide)  # limits never share units
    assert asked == [10, 10, 10]


async def test_a_refused_or_failed_batch_sends_the_waiters_back_to_one_unit_decisions() -> None:
    units = UnitBatches(0.005, clock=FakeClock())
    release = asyncio.Event()

    async def refuse(n: int) -> Decision:
        await release.wait()
        return Decision(False, 0.5, 0)

    first = asyncio.create_task(units.take("k", 8, refuse))
    waiters = [asyncio.create_task(units.take("k", 8, refuse)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await first is False
    assert await asyncio.gather(*waiters) == [False] * 5

    async def broken(n: int) -> Decision:
        await asyncio.sleep(0)
        raise RuntimeError("redis said no")

    failing = asyncio.create_task(units.take("k", 8, broken))
    waiter = asyncio.create_task(units.take("k", 8, broken))
    with pytest.raises(RuntimeError):
        await failing
    assert await waiter is False
