"""The leader lease, kept by one background task: taken when free, renewed every third of its length.

The lease is a Redis key with a TTL (:meth:`sluice.schedules.ScheduleStore.acquire`); every new holder gets a
higher fencing token, and every claim of an occurrence is refused unless the lease in Redis still carries the
claimer's token. Locally, the lease counts as held until ``lease`` seconds after the call that renewed it
*started* (monotonic clock): a process that was stopped (SIGSTOP, a long GC pause) and wakes up past that
does not fire before it renewed, and if another scheduler took the lead meanwhile Redis refuses its claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sluice.resilience.clock import SYSTEM, Clock
from sluice.schedules import Lease, ScheduleStore, StoreUnavailable

from .metrics import SchedulerMetrics

__all__ = ["Leadership", "sleep_or_stop"]


async def sleep_or_stop(clock: Clock, stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` on ``clock`` unless ``stop`` is set first; answers whether it was."""
    if stop.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waiter):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sleeper
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    return stop.is_set()


class Leadership:
    """This instance's view of the lease. ``held()``: the lease while it is valid, else ``None``;
    ``term_start_ms``: when the current term began (wall clock, ms)."""

    def __init__(
        self,
        store: ScheduleStore,
        instance: str,
        *,
        lease: float = 10.0,
        clock: Clock = SYSTEM,
        metrics: SchedulerMetrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.instance = instance
        self.lease = lease
        self.clock = clock
        self.metrics = metrics or SchedulerMetrics()
        self.log = logger or logging.getLogger("sluice.scheduler")
        self.term_start_ms = 0
        self.holder: str | None = None  # who leads, as last read
        self.last_ok: float | None = None  # monotonic time of the last successful call
        self.changed = asyncio.Event()  # set whenever this instance takes the lead
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._down = False

    @property
    def renew_every(self) -> float:
        return self.lease / 3

    def held(self) -> Lease | None:
        if self._lease is not None and self.clock.monotonic() < self._valid_until:
            return self._lease
        return None

    def drop(self, why: str) -> None:
        """Stop acting as the leader at once (a claim was fenced: someone else holds the lease)."""
        if self._lease is not None:
            self.log.warning("no longer the leader: %s", why)
        self._lease = None
        self.metrics.leader.set(0)

    async def tick(self) -> None:
        """One take-or-renew call."""
        started = self.clock.monotonic()
        try:
            got = await self.store.acquire(self.instance, self.lease)
        except StoreUnavailable as e:
            if not self._down:
                self._down = True
                self.log.warning("cannot reach Redis for the leader lease (%s); retrying", e)
            self.metrics.store_up.set(0)
            if self._lease is not None and self.held() is None:
                self.drop("the lease could not be renewed in time")
            return
        if self._down:
            self._down = False
            self.log.info("Redis is back")
        self.metrics.store_up.set(1)
        self.last_ok = self.clock.monotonic()
        self.holder = got.holder
        if not got.held:
            if self._lease is not None:
                self.drop(f"the lease is held by {got.holder} (token {got.token})")
            return
        if self._lease is None or self._lease.token != got.token or self.held() is None:
            self.term_start_ms = int(self.clock.time() * 1000)
            self.metrics.leader_changes.inc()
            self.log.info("leading (fencing token %d)", got.token)
            self.changed.set()
        self._lease = got
        self._valid_until = started + self.lease
        self.metrics.leader.set(1)

    async def keep(self, stop: asyncio.Event) -> None:
        """Take or renew the lease every :attr:`renew_every` seconds until ``stop``; then let it go."""
        while not stop.is_set():
            await self.tick()
            if await sleep_or_stop(self.clock, stop, self.renew_every):
                break
        lease = self.held()
        self._lease = None
        self.metrics.leader.set(0)
        if lease is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(lease)
                self.log.info("gave up the lead")
