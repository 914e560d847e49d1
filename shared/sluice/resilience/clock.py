"""Clocks: where the primitives (and the in-memory backend) read the time and sleep.

A :class:`Clock` has three methods: ``monotonic()`` (seconds, for intervals), ``time()`` (wall-clock
seconds since the epoch: the in-memory backend's stand-in for Redis' ``TIME``) and ``sleep(seconds)``.

* :data:`SYSTEM` is the real one: its methods *are* ``time.monotonic``, ``time.time`` and
  ``asyncio.sleep`` (no wrapper, so the Redis hot path pays nothing for the seam).
* :class:`FakeClock` stands still until a test moves it with :meth:`FakeClock.advance`. Its
  ``sleep`` waits until the clock has been advanced past the sleeper's deadline, so a test decides
  when time passes and never waits for real; :meth:`FakeClock.sleepers` tells it that someone sleeps.

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    limiter = GCRALimiter(backend, Rate.per_second(10), burst=1)
    await limiter.try_acquire("k")          # allowed
    clock.advance(0.1)                       # one emission interval later
    await limiter.try_acquire("k")          # allowed again
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

from sluice.errors import ConfigError

__all__ = ["SYSTEM", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic and wall time in seconds, and an async sleep."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep`` themselves."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)
    sleep = staticmethod(asyncio.sleep)


#: The one real clock every primitive uses unless it is given another.
SYSTEM = SystemClock()


class FakeClock:
    """A clock that moves only when :meth:`advance` is called: tests run in no real time.

    ``start`` is the wall time (seconds since the epoch) it shows at first; its monotonic time starts
    at ``monotonic_start``. Both move together.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, monotonic_start: float = 1_000.0) -> None:
        self._offset = start - monotonic_start
        self._now = monotonic_start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._sleeping: asyncio.Event | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._offset

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds`` (at once for ``seconds <= 0``)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), fut))
        if self._sleeping is not None:
            self._sleeping.set()
        await fut

    def advance(self, seconds: float) -> None:
        """Move both clocks ``seconds`` ahead and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ConfigError("a clock does not go back")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def jump(self) -> float:
        """Advance to the earliest sleeper's deadline (waking it); answers the seconds advanced (0: none)."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            return 0.0
        step = max(0.0, self._sleepers[0][0] - self._now)
        self.advance(step)
        return step

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock now."""
        return sum(not fut.done() for _, _, fut in self._sleepers)

    async def until_sleeping(self, count: int = 1) -> None:
        """Return once at least ``count`` tasks sleep on this clock (a signal, not a poll of real time)."""
        while self.sleepers < count:
            event = self._sleeping
            if event is None:
                event = self._sleeping = asyncio.Event()
            await event.wait()
            if self._sleeping is event:  # the first waiter to wake arms a fresh one for the next sleep
                self._sleeping = None
