"""The rate-limit step: GCRA per task (per payload key), the declared limit or the run-time override.

In every pipeline of a worker with Redis, since ``sluice limits set`` can limit any task at run time:
the override is read from :class:`~sluice.limits.LimitStore` (a local copy refreshed every 2 s, so no
round trip per task), and a task with neither a declared limit nor an override pays that read only.

Over the limit is not a failure: a wait shorter than ``in_place`` seconds is waited here (one poller
per key per process), a longer one defers the task (``rate_limited``, no attempt spent) by the
limiter's ``retry_after``, spread at the limit's emission interval over this worker's deferrals
(:meth:`RateLimitStep._line_up`). At a high rate one decision takes a small batch of units that the
tasks arriving in the next few milliseconds share (:mod:`sluice_worker._unit_batches`). Each decision
is counted (``telemetry.limit_decision``). Redis: one (pipelined, coalesced) round trip per decision.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from sluice.limits import LimitStore, effective_rate
from sluice.policy import RateLimit, payload_field
from sluice.resilience import GCRALimiter, Rate
from sluice.resilience.clock import Clock
from sluice.tasks import Task
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker._resilience_cache import ResilienceCache
from sluice_worker._unit_batches import UnitBatches
from sluice_worker.outcome import RATE_LIMITED, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import BACKEND_RETRY, Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["IN_PLACE", "MAX_BATCH", "UNIT_HOLD", "RateLimitStep", "batch_size"]

IN_PLACE = 0.25  # seconds a rate-limited task may wait in place before it is deferred instead
UNIT_HOLD = 0.005  # seconds a unit taken ahead may wait for its task (then it is dropped, unused)
MAX_BATCH = 64


def batch_size(rate: RateLimit) -> int:
    """Units one decision takes at a high rate: ``UNIT_HOLD`` seconds of the rate, at most ``MAX_BATCH`` and
    half the burst. 1 (one unit per decision) below 400 per second. A unit taken ahead is used within
    ``UNIT_HOLD`` or dropped, so the fleet admits at most ``UNIT_HOLD`` seconds of the rate (0.5 %) above
    the GCRA bound in any window, and never more than the limit over time."""
    return _batch(rate.rate, rate.effective_burst)


def _batch(rate: Rate, burst: int) -> int:
    # the limiter's own rate and burst: no Rate built per delivery
    return max(1, min(MAX_BATCH, burst // 2, int(rate.units_per_second * UNIT_HOLD)))


class RateLimitStep(Step):
    name = "rate limit"

    def __init__(
        self,
        task: Task,
        declared: RateLimit | None,
        limits: LimitStore,
        cache: ResilienceCache,
        clock: Clock,
        telemetry: Telemetry | NullTelemetry,
        in_place: float = IN_PLACE,
    ) -> None:
        super().__init__(task)
        self._declared = declared
        self._limits = limits
        self._cache = cache
        self._clock = clock
        self._telemetry = telemetry
        self._in_place = in_place
        self._pollers: dict[str, asyncio.Lock] = {}
        self._slots: dict[str, float] = {}  # per limit: when this worker's last deferral comes back
        self._units = UnitBatches(UNIT_HOLD, clock=clock)  # per limit: units taken ahead, for a few ms

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> RateLimitStep:
        return cls(
            task,
            task.policy.rate_limit,
            policies.limits,
            policies.cache,
            policies.clock,
            policies.telemetry,
            policies.in_place,
        )

    async def before(self, d: Delivery) -> Outcome | None:
        task = self.task
        override = await self._limits.current(task.name)
        if override is None and self._declared is None:
            return None  # the common case: no limit on this task
        rate = effective_rate(self._declared, override)
        if rate is None:
            return None
        part = payload_field(d.msg.payload, rate.key) if rate.key else None
        name = task.name if part is None else f"{task.name}:{part}"
        limiter = self._cache.limiter(rate)
        wait, waited = await self._take(name, limiter)
        if wait is not None:
            put_off = self._line_up(name, limiter.rate, wait)
            self._telemetry.limit_decision(task.name, False, put_off)
            return Deferred(RATE_LIMITED, put_off)
        self._telemetry.limit_decision(task.name, True, waited or None)
        return None

    async def _take(self, name: str, limiter: GCRALimiter) -> tuple[float | None, float]:
        """Take one unit of the limit ``name``: (``None`` when taken, else seconds to defer by; seconds
        the task waited here for it)."""
        rate = limiter.rate
        clock = self._clock
        deadline = clock.monotonic() + self._in_place
        batch = _batch(rate, limiter.burst)
        # a high rate: a few milliseconds' worth of units per decision, shared by the tasks arriving
        if batch > 1 and await self._units.take(name, batch, lambda n: limiter.try_acquire(name, n)):
            return None, 0.0
        d = await limiter.try_acquire(name)  # the common case: room, one (pipelined) round trip
        if d.allowed:
            return None, 0.0
        if d.degraded:
            return BACKEND_RETRY, 0.0
        if math.isinf(d.retry_after) or d.retry_after > self._in_place:
            return (d.retry_after if math.isfinite(d.retry_after) else rate.period), 0.0
        # a short wait: waited here, by one poller per key at a time (no herd polling Redis)
        start = clock.monotonic()
        lock = self._pollers.get(name)
        if lock is None:
            lock = self._pollers[name] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._in_place):
                await lock.acquire()
        except TimeoutError:
            return d.retry_after, 0.0
        try:
            while True:
                wait = d.retry_after
                if clock.monotonic() + wait > deadline:
                    return wait, 0.0
                await clock.sleep(wait)
                d = await limiter.try_acquire(name)
                if d.allowed:
                    return None, clock.monotonic() - start
                if d.degraded:
                    return BACKEND_RETRY, 0.0
                if math.isinf(d.retry_after):
                    return rate.period, 0.0
        finally:
            lock.release()

    def _line_up(self, name: str, rate: Rate, wait: float) -> float:
        """Spread this worker's deferrals of one limit at its emission interval, instead of sending them
        all back after the same ``retry_after`` (to be refused again together): far fewer round trips
        through the delay tiers when a backlog meets its limit."""
        now = self._clock.monotonic()
        slot = max(now + wait, self._slots.get(name, 0.0) + rate.interval)
        self._slots[name] = slot
        return slot - now
