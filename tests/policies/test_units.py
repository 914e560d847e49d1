"""Units taken ahead: tasks arriving together share one decision; held units expire unused."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, cast

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


class _Suspensions:
    """Counts how often an awaited coroutine gives the event loop back (each a wake-up to come)."""

    def __init__(self, coro: Coroutine[Any, Any, bool]) -> None:
        self._coro = coro
        self.count = 0

    def __await__(self) -> Generator[Any, Any, bool]:
        inner = self._coro.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                yielded = inner.send(sent) if thrown is None else inner.throw(thrown)
            except StopIteration as stop:
                return cast(bool, stop.value)
            self.count += 1
            sent, thrown = None, None
            try:
                sent = yield yielded
            except BaseException as exc:
                thrown = exc


async def test_each_waiting_task_is_woken_once_not_once_per_batch() -> None:
    """With one shared future per decision, every task not served by a batch woke on each decision and
    waited again (about four wake-ups a task for 200 tasks in batches of 64): a trip through the event
    loop each, a third of the rate-limit step's CPU. Each task now waits on its own future, woken once."""
    units = UnitBatches(0.005, clock=FakeClock())

    async def decide(n: int) -> Decision:
        await asyncio.sleep(0)  # on the wire: the other tasks arrive meanwhile
        return Decision(True, 0.0, 1000)

    async def take(counted: _Suspensions) -> bool:
        return await counted

    counted = [_Suspensions(units.take("k", 64, decide)) for _ in range(200)]
    assert all(await asyncio.gather(*(take(c) for c in counted)))
    # the first task decides (1: its decision on the wire); every other one waits once for its unit,
    # and the 3 handed the next decision wait once more, on the wire
    assert sorted(c.count for c in counted) == [1] * 197 + [2] * 3


async def test_units_go_to_the_waiting_tasks_in_arrival_order() -> None:
    units = UnitBatches(0.005, clock=FakeClock())
    asked: list[int] = []
    served: list[int] = []

    async def decide(n: int) -> Decision:
        asked.append(len(served))  # how many were served when each decision went out
        await asyncio.sleep(0)
        return Decision(True, 0.0, 1000)

    async def take(i: int) -> None:
        assert await units.take("k", 4, decide)
        served.append(i)

    await asyncio.gather(*(take(i) for i in range(10)))
    assert served == list(range(10))
    assert asked == [0, 4, 8]  # a decision for each 4, sent by the first task its batch left waiting


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    units = UnitBatches(0.005, clock=FakeClock())
    wire = asyncio.Event()
    asked: list[int] = []

    async def decide(n: int) -> Decision:
        asked.append(n)
        if len(asked) == 1:
            await wire.wait()
        return Decision(True, 0.0, 1000)

    first = asyncio.create_task(units.take("k", 3, decide))
    waiters = [asyncio.create_task(units.take("k", 3, decide)) for _ in range(4)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    wire.set()
    assert await first is True
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    # its unit went to the next two; the fourth, left waiting, sent the next decision
    assert await asyncio.gather(*waiters[1:]) == [True] * 3
    assert asked == [3, 3]


async def test_a_task_cancelled_as_its_turn_to_decide_came_passes_the_turn_on() -> None:
    units = UnitBatches(0.005, clock=FakeClock())
    asked: list[int] = []
    waiters: list[asyncio.Task[bool]] = []
    wire = asyncio.Event()

    async def decide(n: int) -> Decision:
        asked.append(n)
        if len(asked) == 1:
            await wire.wait()
            # runs before the second waiter resumes: it was handed the next decision, then cancelled
            asyncio.get_running_loop().call_soon(waiters[1].cancel)
        return Decision(True, 0.0, 1000)

    first = asyncio.create_task(units.take("k", 2, decide))
    waiters.extend(asyncio.create_task(units.take("k", 2, decide)) for _ in range(3))
    await asyncio.sleep(0)
    wire.set()
    assert await first is True
    assert await waiters[0] is True  # the batch's one spare unit
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    async with asyncio.timeout(5):  # decided in its place, not left waiting forever
        assert await waiters[2] is True
    assert asked == [2, 2]
