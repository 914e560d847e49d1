"""Simulated time for :mod:`sluice.testing`: the worker's clock over a FakeClock, and when to move it.

The worker under test gets a :class:`SimClock`: the fake clock's time, and a ``sleep`` that notes
which asyncio task sleeps (a rate-limited delivery waiting in place, a lease heartbeat). The
:func:`until_one_done` driver runs deliveries until one of them ends and moves the fake clock only
when every running delivery sleeps on it (then to the earliest sleeper's deadline: a discrete-event
simulation, never a real-time wait). A delivery that waits for something else (a sync handler in the
thread pool, another delivery's lock) is waited for; if some sleep on the clock while the others
make no progress for :data:`SETTLE` seconds of real time, the clock moves as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sluice.resilience.clock import FakeClock

__all__ = ["SETTLE", "SimClock", "until_one_done"]

SETTLE = 0.002  # real seconds without progress, while some deliveries sleep on the clock, before it moves


class SimClock:
    """The worker's :class:`~sluice.resilience.clock.Clock` in a test harness (see the module doc)."""

    def __init__(self, fake: FakeClock) -> None:
        self.fake = fake
        self.asleep: set[asyncio.Task[object]] = set()
        self.changed = asyncio.Event()  # set when a task starts sleeping on the clock

    def monotonic(self) -> float:
        return self.fake.monotonic()

    def time(self) -> float:
        return self.fake.time()

    async def sleep(self, seconds: float) -> None:
        me = asyncio.current_task()
        if seconds <= 0 or me is None:
            await self.fake.sleep(seconds)
            return
        self.asleep.add(me)
        self.changed.set()
        try:
            await self.fake.sleep(seconds)
        finally:
            self.asleep.discard(me)


async def until_one_done(
    clock: SimClock, running: set[asyncio.Task[None]], on_jump: Callable[[], None]
) -> set[asyncio.Task[None]]:
    """Drive ``running`` (not empty) until at least one ends; answers those that ended. The clock moves
    to the earliest sleeper when every running delivery sleeps on it (``on_jump`` is called after each
    move: it may raise to stop the run)."""
    while True:
        clock.changed.clear()
        asleep = running & clock.asleep
        if asleep == running:  # every delivery waits for simulated time: move it
            clock.fake.jump()
            on_jump()
            await asyncio.sleep(0)  # the woken run before anything else is decided
            continue
        changed = asyncio.ensure_future(clock.changed.wait())
        try:
            done, _ = await asyncio.wait(
                {*running, changed},
                timeout=SETTLE if asleep else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            changed.cancel()
        ended = {t for t in done if t is not changed}
        if ended:
            return ended  # type: ignore[return-value]
        if not done:  # some sleep on the clock, the others made no progress
            clock.fake.jump()
            on_jump()
            await asyncio.sleep(0)
