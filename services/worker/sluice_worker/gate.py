"""The policy gate: what stands between a delivery and its handler, fleet-wide, on Redis.

Before the run, in this order (each step cheap when the task does not declare it):

1. **due time**: an ``x-sluice-eta`` still ahead sends the task on to the next delay tier;
2. **rate limit** (declared, or the run-time override of ``sluice limits``): GCRA per task (per payload key).
   Over the limit is not a failure: a wait shorter than ``in_place`` seconds is waited here (one poller
   per key per process), a longer one defers the task by the limiter's ``retry_after``; no attempt spent;
3. **idempotency**: a key already done is acked and skipped (the outcome
   :data:`~sluice_worker.outcome.DEDUPLICATED`, counted as ``deduplicated``); one claimed by a running
   worker defers the task until that claim's lease ends;
4. **concurrency**: a fleet-wide lease, renewed while the handler runs; none free: deferred;
5. **breaker**: an open breaker defers the task by its remaining open time (no attempt spent), so the
   worker stops running that task's work while it is open; half-open trials follow the breaker's permits.

Then the handler runs, through the one call path of every task (:class:`~sluice_worker.invoke.Invoker`:
an ``async`` one under its ``timeout``; whatever it ends with is answered, not raised), and after it: the claim is completed
(success) or released (failure), the breaker records the outcome, the lease is released, and a failure
goes to the :class:`~sluice_worker.failures.RetryOrDeadLetter` policy; a retry it chooses must also be
granted by the task's fleet retry budget, if it declares one (else: the DLQ, ``retry_budget_exhausted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from sluice.limits import LimitStore, effective_rate
from sluice.policy import RateLimit, payload_field
from sluice.protocol import TaskMessage
from sluice.resilience import (
    BackendUnavailable,
    CircuitBreaker,
    CircuitOpen,
    Claimed,
    ClaimLost,
    ConcurrencyLimited,
    Done,
    IdempotencyStore,
    KeySpace,
    Permit,
)
from sluice.settings import Settings
from sluice.tasks import Task
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker._budgets import EXHAUSTED, Budgets
from sluice_worker._primitives import Primitives
from sluice_worker._units import Units
from sluice_worker.delays import Republish, defer, due
from sluice_worker.failures import RetryOrDeadLetter, TaskTimeout
from sluice_worker.outcome import ACK, DEDUPLICATED, FailurePolicy, Outcome

__all__ = ["GateStats", "PolicyGate", "redis_for"]

log = logging.getLogger("sluice.worker")

IN_PLACE = 0.25  # seconds a rate-limited task may wait in place before it is deferred instead
RATE_LIMITED = "rate_limited"
BACKEND_RETRY = 1.0  # seconds to defer a task whose policy Redis cannot decide (fail closed)

UNIT_HOLD = 0.005  # seconds a unit taken ahead may wait for its task (then it is dropped, unused)
MAX_BATCH = 64

# the handler's call (sluice_worker.invoke.Invoker, the same for every task): None if it returned, else
# whatever it ended with (a failure; only the worker's own cancellation is raised)
Call = Callable[[], Awaitable[BaseException | None]]


def _batch(rate: RateLimit) -> int:
    """Units one decision takes at a high rate: ``UNIT_HOLD`` seconds of the rate, at most ``MAX_BATCH`` and
    half the burst. 1 (one unit per decision) below 400 per second. A unit taken ahead is used within
    ``UNIT_HOLD`` or dropped, so the fleet admits at most ``UNIT_HOLD`` seconds of the rate (0.5 %) above
    the GCRA bound in any window, and never more than the limit over time."""
    per_second = rate.limit / rate.period
    return max(1, min(MAX_BATCH, rate.effective_burst // 2, int(per_second * UNIT_HOLD)))


def redis_for(settings: Settings) -> Redis:
    """The worker's Redis client: enough connections for every slot and its lease heartbeat, so a busy
    worker never fails a policy decision for want of a connection (the pool would raise, not wait)."""
    return Redis.from_url(
        settings.redis_url,
        max_connections=2 * settings.concurrency + 16,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
    )


@dataclass(slots=True)
class GateStats:
    """What the gate did, by kind (``skipped``, ``deferred:rate_limited``, ``timeout``, ...)."""

    counts: Counter[str]


class PolicyGate:
    """Enforces every task's policies; one per worker process, sharing one Redis client."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        limits: LimitStore | None = None,
        failures: RetryOrDeadLetter | None = None,
        in_place: float = IN_PLACE,
        telemetry: Telemetry | NullTelemetry | None = None,
    ) -> None:
        self.redis = redis
        self.keys = KeySpace(prefix)
        self.limits = limits or LimitStore(redis, prefix)
        self.failures = failures or RetryOrDeadLetter()
        self.stats = GateStats(Counter())
        # rate-limit decisions and refused retries (the metrics service's sluice_rate_limit_* and
        # sluice_retry_budget_refusals_total); the outcome of each delivery is the consumer's to count
        self._telemetry = telemetry or NullTelemetry()
        self._in_place = in_place
        self.primitives = Primitives(redis, self.keys)
        self._pollers: dict[str, asyncio.Lock] = {}
        self._slots: dict[str, float] = {}  # per limit: when this worker's last deferral comes back
        self._budgets = Budgets(self.primitives)
        self._units = Units(UNIT_HOLD)  # per limit: units taken ahead, usable for a few ms

    async def aclose(self) -> None:
        """Wait for the rate-limit decisions still on the wire (the Redis client is the caller's)."""
        await self.primitives.aclose()

    async def applies(self, task: Task) -> bool:
        """Does ``task`` need the gate (declared policies, or a run-time limit)?"""
        p = task.policy
        if p.rate_limit or p.concurrency or p.breaker or p.idempotency or p.timeout or p.retry_budget:
            return True
        return await self.limits.current(task.name) is not None

    async def run(self, task: Task, msg: TaskMessage, call: Call, failures: FailurePolicy) -> Outcome:
        """Decide, run ``call`` (the handler) if allowed, and answer the delivery's outcome (what the
        handler ended with, if not ``None``, becomes what ``failures`` says)."""
        later = due(msg)
        if later is not None:
            self._count("deferred:eta")
            return later
        p = task.policy
        if p.retry_budget is not None and msg.attempt == 1:
            await self._budgets.first_attempt(task, p.retry_budget)
        rate = effective_rate(p.rate_limit, await self.limits.current(task.name))
        if rate is not None:
            part = payload_field(msg.payload, rate.key) if rate.key else None
            name = task.name if part is None else f"{task.name}:{part}"
            wait, waited = await self._take_rate(name, rate)
            if wait is not None:
                self._count("deferred:rate_limited")
                put_off = self._line_up(name, rate, wait)
                self._telemetry.limit_decision(task.name, False, put_off)
                return defer(RATE_LIMITED, put_off)
            self._telemetry.limit_decision(task.name, True, waited or None)
        async with contextlib.AsyncExitStack() as stack:
            claim: tuple[IdempotencyStore, str, str] | None = None
            if p.idempotency is not None:
                key = p.idempotency.key_for(msg)
                if key is not None:
                    store = self.primitives.store(p.idempotency.lease, p.idempotency.ttl)
                    name = f"{task.name}:{key}"
                    try:
                        got = await store.claim(name)
                    except BackendUnavailable as e:
                        return self._backend_down(task, e)
                    if isinstance(got, Done):
                        self._count("skipped")
                        log.info(
                            "skipped task %s (%s): idempotency key %r already done", msg.id, task.name, key
                        )
                        return DEDUPLICATED
                    if not isinstance(got, Claimed):
                        self._count("deferred:in_progress")
                        return defer("in_progress", got.retry_after)
                    claim = (store, name, got.token)
                    stack.push_async_callback(self._release_claim, claim)
            if p.concurrency is not None:
                sem = self.primitives.sem(task.name, p.concurrency)
                part = payload_field(msg.payload, p.concurrency.key) if p.concurrency.key else None
                try:
                    await stack.enter_async_context(
                        sem.acquire(
                            task.name if part is None else f"{task.name}:{part}", max_wait=self._in_place
                        )
                    )
                except ConcurrencyLimited:
                    self._count("deferred:concurrency")
                    return defer("concurrency", BACKEND_RETRY)
                except BackendUnavailable as e:
                    return self._backend_down(task, e)
            breaker: CircuitBreaker | None = None
            permit: Permit | None = None
            if p.breaker is not None:
                breaker = self.primitives.breaker(p.breaker.name, p.breaker.policy)
                try:
                    permit = await breaker.allow()
                except CircuitOpen as e:
                    self._count("deferred:breaker_open")
                    return defer("breaker_open", e.retry_after)
                except BackendUnavailable as e:
                    return self._backend_down(task, e)
            error = await call()
            if error is not None:
                if isinstance(error, TaskTimeout):
                    self._count("timeout")
                if breaker is not None and permit is not None:
                    await self._record(breaker, permit, not breaker.policy.counts_as_failure(error))
                outcome = failures.on_error(task, msg, error)
                if (
                    p.retry_budget is not None
                    and isinstance(outcome, Republish)
                    and not await self._budgets.allow_retry(task, p.retry_budget)
                ):
                    self._count("dead:retry_budget")
                    self._telemetry.budget_refused(self._budgets.name(task, p.retry_budget))
                    return self.failures.give_up(
                        task, msg, error, EXHAUSTED, "the fleet's retry budget is spent"
                    )
                return outcome
            if breaker is not None and permit is not None:
                await self._record(breaker, permit, True)
            if claim is not None:
                stack.pop_all()
                await self._finish_claim(claim, done=True)
        return ACK

    # ---- steps
    async def _take_rate(self, name: str, rate: RateLimit) -> tuple[float | None, float]:
        """Take one unit of the limit ``name``: (``None`` when taken, else seconds to defer by; seconds
        the task waited here for it)."""
        limiter = self.primitives.limiter(rate)
        deadline = time.monotonic() + self._in_place
        batch = _batch(rate)
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
        start = time.monotonic()
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
                if time.monotonic() + wait > deadline:
                    return wait, 0.0
                await asyncio.sleep(wait)
                d = await limiter.try_acquire(name)
                if d.allowed:
                    return None, time.monotonic() - start
                if d.degraded:
                    return BACKEND_RETRY, 0.0
                if math.isinf(d.retry_after):
                    return rate.period, 0.0
        finally:
            lock.release()

    def _line_up(self, name: str, rate: RateLimit, wait: float) -> float:
        """Spread this worker's deferrals of one limit at its emission interval, instead of sending them
        all back after the same ``retry_after`` (to be refused again together): far fewer round trips
        through the delay tiers when a backlog meets its limit."""
        now = time.monotonic()
        slot = max(now + wait, self._slots.get(name, 0.0) + rate.period / rate.limit)
        self._slots[name] = slot
        return slot - now

    async def _record(self, breaker: CircuitBreaker, permit: Permit, success: bool) -> None:
        try:
            await breaker.record(permit, success)
        except BackendUnavailable as e:  # the outcome is lost, the task's outcome is not
            log.warning("breaker %s: outcome not recorded: %s", breaker.name, e)

    async def _release_claim(self, claim: tuple[IdempotencyStore, str, str]) -> None:
        await self._finish_claim(claim, done=False)

    async def _finish_claim(self, claim: tuple[IdempotencyStore, str, str], *, done: bool) -> None:
        """Complete (the effect happened) or release (it failed) a claim; never raises for Redis."""
        store, name, token = claim
        try:
            await (store.complete(name, token) if done else store.release(name, token))
        except (ClaimLost, BackendUnavailable) as e:
            what = "completed (a redelivery would run again)" if done else "released (it will expire)"
            log.warning("idempotency claim %s not %s: %s", name, what, e)

    def _backend_down(self, task: Task, e: Exception) -> Outcome:
        self._count("deferred:backend")
        log.warning("task %s deferred: its policy cannot be decided: %s", task.name, e)
        return defer("backend_unavailable", BACKEND_RETRY)

    def _count(self, what: str) -> None:
        self.stats.counts[what] += 1
