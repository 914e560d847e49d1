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

The limit counts by its ``window``: GCRA (the default) or the exact sliding log (``"50/s sliding"``:
never more than the limit in any window of the period; the worker's limiter counts each admission for
:data:`~sluice_worker._resilience_cache.SLIDING_MARGIN` beyond the period, for the spread between an
admission and its request's arrival upstream, and a call that ends later than :data:`SETTLE_AFTER`
after its admission has its unit settled on the way out, counted a period from the call's end).

An adaptive limit (``RateLimit(adaptive=True)``, ``"200/s adaptive"``) is decided by
:class:`~sluice.resilience.adaptive.AdaptiveGCRALimiter`: its script reads the fleet's effective rate
(:class:`~sluice.resilience.AdaptiveRate`, an AIMD hash next to the limit's key) in the same round
trip, so no worker runs on a stale copy; each throttle of the limit's key cuts that rate on the way out
(one more round trip per throttle, none per task).

Upstream throttling: a handler that raises :class:`sluice.Throttled` (``raise_for_throttle``) is
deferred (``throttled``, no attempt and no retry budget spent, never the DLQ: the failure step turns
it into a deferral), and on the way out this step freezes, fleet-wide in Redis
(:class:`~sluice.resilience.Freezes`), the task's rate-limit key, or the throttle's ``scope``, until
the time the upstream named. Every worker's decision reads that freeze in the limiter's own script
(no extra round trip): while it holds, the key's tasks are deferred (``throttled``) until it ends,
spread at the limit's interval, for :data:`FREEZE_RECHECK` seconds at most (then decided again: a
thawed key's tasks run within that). A scope is learned per worker from the throttles its tasks raise: a
key whose task named a scope is then decided against the scope's freeze. A task with no rate limit
takes no decision: once one of its throttles was seen here, this worker reads its freeze (one round
trip a delivery) until it finds it ended.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from redis.asyncio import RedisCluster

from sluice.limits import LimitStore, effective_rate
from sluice.policy import RateLimit, payload_field
from sluice.resilience import Freezes, Rate, SlidingLogLimiter
from sluice.resilience.clock import Clock
from sluice.tasks import Task
from sluice.telemetry import NullTelemetry, Telemetry
from sluice.throttle import Throttled
from sluice_worker._resilience_cache import SLIDING_MARGIN, Limiter, ResilienceCache
from sluice_worker._unit_batches import UnitBatches
from sluice_worker.outcome import RATE_LIMITED, THROTTLED, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import BACKEND_RETRY, Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = [
    "FREEZE_RECHECK",
    "IN_PLACE",
    "MAX_BATCH",
    "SETTLE_AFTER",
    "UNIT_HOLD",
    "RateLimitStep",
    "batch_size",
]

log = logging.getLogger("sluice.worker")

IN_PLACE = 0.25  # seconds a rate-limited task may wait in place before it is deferred instead
UNIT_HOLD = 0.005  # seconds a unit taken ahead may wait for its task (then it is dropped, unused)
MAX_BATCH = 64
_MAX_SCOPES = 10_000  # limit names whose throttles named a scope, remembered per step
#: seconds at most a task deferred by a freeze waits before its key is decided again: a freeze ended
#: early (``sluice limits thaw``) lets its tasks run within this, at the cost of one trip through a delay
#: tier per deferred task this often while a long freeze holds
FREEZE_RECHECK = 16.0
#: seconds from a sliding-window admission to the end of its call past which the unit is settled
#: (counted a period from the call's end; :meth:`SlidingLogLimiter.settle`, one round trip). A quarter of
#: :data:`SLIDING_MARGIN`: a call that ends sooner sent its request within the margin even if the
#: decision's reply took the rest of it to come back
SETTLE_AFTER = SLIDING_MARGIN / 4


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
    # on the way out it acts on a throttled handler, and settles a slow call's sliding-window unit (held
    # for the sliding admissions only: the others' successful runs skip its after)
    after_on_ack = False
    after_when_held = True

    def __init__(
        self,
        task: Task,
        declared: RateLimit | None,
        limits: LimitStore,
        cache: ResilienceCache,
        clock: Clock,
        telemetry: Telemetry | NullTelemetry,
        in_place: float = IN_PLACE,
        *,
        split_scopes: bool = False,
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
        self._freezes: Freezes = cache.freezes
        self._scopes: dict[str, str] = {}  # limit name -> the scope its throttles named (learned here)
        self._watch: str | None = None  # no limit: a freeze a throttle set here, read until it ends
        # Redis Cluster: a scope's freeze is in another slot than the limit's key, so it is read apart
        self._split = split_scopes

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
            split_scopes=isinstance(policies.redis, RedisCluster),
        )

    def _limit(self, d: Delivery, override: RateLimit | None) -> tuple[RateLimit | None, str]:
        """The limit that applies to ``d`` (``None``: none) and the name of its key."""
        task = self.task
        if override is None and self._declared is None:
            return None, task.name
        rate = effective_rate(self._declared, override)
        if rate is None:
            return None, task.name
        part = payload_field(d.msg.payload, rate.key) if rate.key else None
        return rate, task.name if part is None else f"{task.name}:{part}"

    async def before(self, d: Delivery) -> Outcome | None:
        task = self.task
        override = await self._limits.current(task.name)
        if override is None and self._declared is None:
            if self._watch is None:
                return None  # the common case: no limit on this task
            return await self._watched(self._watch)
        rate, name = self._limit(d, override)
        if rate is None:
            return None
        limiter = self._cache.limiter(rate)
        freeze = self._scopes.get(name, name) if self._scopes else name
        if freeze != name and self._split:
            held = await self._watched(freeze, keep=True)
            if held is not None:
                return held
            freeze = name
        wait, waited, frozen, stamp = await self._take(name, limiter, freeze)
        if stamp and isinstance(limiter, SlidingLogLimiter):
            d.hold(self, (limiter, name, stamp, self._clock.monotonic()))
        if wait is not None:
            put_off = self._line_up(name, limiter.rate, min(wait, FREEZE_RECHECK) if frozen else wait)
            self._telemetry.limit_decision(task.name, False, put_off)
            return Deferred(THROTTLED if frozen else RATE_LIMITED, put_off)
        self._telemetry.limit_decision(task.name, True, waited or None)
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        """A throttled handler (the failure step made it a ``throttled`` deferral): freeze its key or scope
        fleet-wide until the upstream's time, and defer it behind that freeze."""
        held = d.held(self)
        if held is not None and d.called:
            await self._settle(*held)
        error = d.error
        if not (
            isinstance(outcome, Deferred) and outcome.reason == THROTTLED and isinstance(error, Throttled)
        ):
            return outcome
        task = self.task
        rate, name = self._limit(d, await self._limits.current(task.name))
        target = error.scope or name
        if target != name:
            if len(self._scopes) >= _MAX_SCOPES:
                self._scopes.clear()
            self._scopes[name] = target
        if rate is None:
            self._watch = target
        self._telemetry.throttled(target)
        left = error.retry_after
        why = f"{task.name}: " + ("throttled" if error.status is None else f"HTTP {error.status}")
        try:
            frozen = await self._freezes.freeze(target, left, reason=why)
        except Exception as e:  # Redis away: the task is deferred all the same, the freeze is lost
            log.warning("task %s: cannot freeze %s for %.1f s: %s", task.name, target, left, e)
            frozen = None
        if frozen is not None:
            left = max(left, frozen.remaining)
        if rate is not None and rate.adaptive:
            await self._slow_down(rate, name)
        left = min(left, FREEZE_RECHECK)
        return Deferred(THROTTLED, left if rate is None else self._line_up(name, rate.rate, left))

    async def _settle(self, limiter: SlidingLogLimiter, name: str, stamp: int, taken: float) -> None:
        """A sliding-window unit whose call took longer than :data:`SETTLE_AFTER`: counted a period from
        the call's end (its request may have reached the upstream that late), one round trip."""
        if self._clock.monotonic() - taken < SETTLE_AFTER:
            return  # the margin covers it
        try:
            await limiter.settle(name, stamp)
        except Exception as e:  # never fails the task: the unit keeps its admission stamp and margin
            log.debug("task %s: cannot settle its sliding unit of %s: %s", self.task.name, name, e)

    async def _slow_down(self, rate: RateLimit, name: str) -> None:
        """A throttle of an adaptive limit: cut its fleet-wide rate (at most once per cooldown)."""
        try:
            state = await self._cache.adaptive(rate).throttled(name)
        except Exception as e:  # Redis away: the freeze (if set) still holds the key; no cut
            log.warning("task %s: cannot cut the adaptive rate of %s: %s", self.task.name, name, e)
            return
        if state.cut:
            log.info("%s: adaptive rate cut to %.3g/s (declared %s)", name, state.per_second, rate)

    async def _watched(self, freeze: str, *, keep: bool = False) -> Outcome | None:
        """A deferral while ``freeze`` holds (one read), else ``None``; an ended freeze is no longer read
        (unless ``keep``: a scope read apart on Redis Cluster)."""
        try:
            found = await self._freezes.get(freeze)
        except Exception as e:  # Redis away: the task runs (no limit of its own to fail closed on)
            log.debug("freeze %s unreadable: %s", freeze, e)
            return None
        if found is None or found.remaining <= 0:
            if not keep:
                self._watch = None
            return None
        return Deferred(THROTTLED, min(found.remaining, FREEZE_RECHECK))

    async def _take(self, name: str, limiter: Limiter, freeze: str) -> tuple[float | None, float, bool, int]:
        """Take one unit of the limit ``name`` unless ``freeze`` holds: (``None`` when taken, else seconds
        to defer by; seconds the task waited here for it; refused by the freeze; the unit's stamp on
        Redis' clock, 0 if none or shared by a batch)."""
        rate = limiter.rate
        clock = self._clock
        deadline = clock.monotonic() + self._in_place
        batch = _batch(rate, limiter.burst)
        # a high rate: a few milliseconds' worth of units per decision, shared by the tasks arriving
        if batch > 1 and await self._units.take(
            name, batch, lambda n: limiter.try_acquire(name, n, freeze=freeze)
        ):
            return None, 0.0, False, 0
        d = await limiter.try_acquire(name, freeze=freeze)  # the common case: room, one round trip
        if d.allowed:
            return None, 0.0, False, d.server_time_us
        if d.frozen:  # a freeze (also one a fail-open limiter saw before Redis went away)
            return d.retry_after, 0.0, True, 0
        if d.degraded:
            return BACKEND_RETRY, 0.0, False, 0
        if math.isinf(d.retry_after) or d.retry_after > self._in_place:
            return (d.retry_after if math.isfinite(d.retry_after) else rate.period), 0.0, False, 0
        # a short wait: waited here, by one poller per key at a time (no herd polling Redis)
        start = clock.monotonic()
        lock = self._pollers.get(name)
        if lock is None:
            lock = self._pollers[name] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._in_place):
                await lock.acquire()
        except TimeoutError:
            return d.retry_after, 0.0, False, 0
        try:
            while True:
                wait = d.retry_after
                if clock.monotonic() + wait > deadline:
                    return wait, 0.0, False, 0
                await clock.sleep(wait)
                d = await limiter.try_acquire(name, freeze=freeze)
                if d.allowed:
                    return None, clock.monotonic() - start, False, d.server_time_us
                if d.frozen:
                    return d.retry_after, 0.0, True, 0
                if d.degraded:
                    return BACKEND_RETRY, 0.0, False, 0
                if math.isinf(d.retry_after):
                    return rate.period, 0.0, False, 0
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
