"""Rate-limit units a worker takes ahead, so a high rate costs one Redis decision per batch of tasks.

At a high rate (see :func:`sluice_worker.policies.rate_limit.batch_size`) one decision takes ``batch`` units; the tasks arriving in the
next ``hold`` seconds use them without a round trip, and units still unused then are dropped (never
handed out later, so the fleet stays within the limit). Tasks that arrive while a batch decision is
on the wire wait for it instead of sending one each: with hundreds of tasks in flight, that is what
makes the batch a batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from sluice.resilience import Decision
from sluice.resilience.clock import SYSTEM, Clock

__all__ = ["UnitBatches"]


class UnitBatches:
    """The units taken ahead of every limit of one worker, each usable for ``hold`` seconds.

    Tasks that arrive while a limit's decision is on the wire queue for its units, each on a future of
    its own (a waiter's cancellation touches nobody else's): the decision's units go to the queue in
    arrival order, and when they run out the first task still queued sends the next decision for the
    rest. Each waiting task is woken once, by its unit, by the refusal, or by its turn to decide (with
    a shared future instead, every task not served by a batch woke, found the units gone and waited
    again: about four wake-ups a task with 256 in flight and batches of 64, each a trip through the
    event loop).
    """

    def __init__(self, hold: float, *, clock: Clock = SYSTEM) -> None:
        self.hold = hold
        self._clock = clock.monotonic
        self._held: dict[str, tuple[int, float]] = {}  # name: (units left, usable until)
        # name: the tasks waiting for its decision on the wire (present while one is)
        self._waiting: dict[str, deque[asyncio.Future[bool | None]]] = {}

    def clear(self) -> None:
        self._held.clear()

    async def take(self, name: str, batch: int, decide: Callable[[int], Awaitable[Decision]]) -> bool:
        """One unit of ``name``: a held one, one from the decision on the wire, or a new decision for
        ``batch`` units. False when the limiter refused the batch (the caller asks for one unit)."""
        held = self._held.get(name)
        if held is not None and held[0] > 0 and self._clock() < held[1]:
            self._held[name] = (held[0] - 1, held[1])
            return True
        queue = self._waiting.get(name)
        if queue is None:
            queue = self._waiting[name] = deque()
        else:  # a decision is on the wire: wait for one of its units
            fut: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
            queue.append(fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.result() is None:
                    self._hand_on(name)  # given the next decision as we were cancelled: pass it on
                raise
            if got is not None:
                return got
            # (None: our turn to decide, for ourselves and the tasks still queued behind us)
        allowed = False
        try:
            allowed = (await decide(batch)).allowed
        finally:
            if allowed:
                self._share(name, queue, batch - 1)
            else:  # refused, failed or cancelled: no batch to share, the waiters ask for one unit each
                del self._waiting[name]
                for waiter in queue:
                    if not waiter.done():
                        waiter.set_result(False)
        return allowed

    def _share(self, name: str, queue: deque[asyncio.Future[bool | None]], units: int) -> None:
        """``units`` to the tasks queued, first come first served; the rest held for later arrivals, or
        the next decision handed to the first task left waiting."""
        while queue and units:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(True)
                units -= 1
        self._held[name] = (units, self._clock() + self.hold)
        self._hand_on(name)

    def _hand_on(self, name: str) -> None:
        """Wake the first task still waiting on ``name`` to send the next decision (none left: the limit
        has no decision on the wire)."""
        queue = self._waiting[name]
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        del self._waiting[name]
