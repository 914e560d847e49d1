"""Rate-limit units a worker takes ahead, so a high rate costs one Redis decision per batch of tasks.

At a high rate (see :func:`sluice_worker.policies.rate_limit.batch_size`) one decision takes ``batch`` units; the tasks arriving in the
next ``hold`` seconds use them without a round trip, and units still unused then are dropped (never
handed out later, so the fleet stays within the limit). Tasks that arrive while a batch decision is
on the wire wait for it instead of sending one each: with hundreds of tasks in flight, that is what
makes the batch a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sluice.resilience import Decision
from sluice.resilience.clock import SYSTEM, Clock

__all__ = ["UnitBatches"]


class UnitBatches:
    """The units taken ahead of every limit of one worker, each usable for ``hold`` seconds."""

    def __init__(self, hold: float, *, clock: Clock = SYSTEM) -> None:
        self.hold = hold
        self._clock = clock.monotonic
        self._held: dict[str, tuple[int, float]] = {}  # name: (units left, usable until)
        self._deciding: dict[str, asyncio.Future[bool]] = {}

    def clear(self) -> None:
        self._held.clear()

    async def take(self, name: str, batch: int, decide: Callable[[int], Awaitable[Decision]]) -> bool:
        """One unit of ``name``: a held one, one from the decision on the wire, or a new decision for
        ``batch`` units. False when the limiter refused the batch (the caller asks for one unit)."""
        while True:
            held = self._held.get(name)
            if held is not None and held[0] > 0 and self._clock() < held[1]:
                self._held[name] = (held[0] - 1, held[1])
                return True
            pending = self._deciding.get(name)
            if pending is None:
                break
            if not await asyncio.shield(pending):  # refused (or failed): no batch to share
                return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._deciding[name] = done
        allowed = False
        try:
            decision = await decide(batch)
            allowed = decision.allowed
            if allowed:
                self._held[name] = (batch - 1, self._clock() + self.hold)
            return allowed
        finally:
            del self._deciding[name]
            done.set_result(allowed)
