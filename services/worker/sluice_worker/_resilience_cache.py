"""The per-worker cache of resilience objects the policy steps use, made once per shape and shared by every
task using it.

One :class:`ResilienceCache` per worker process, over one Redis client (or any backend of
:mod:`sluice.resilience`, e.g. the in-memory one in tests), the deployment's key prefix and the worker's
clock (the primitives' local time: caches, waits, lease heartbeats).
"""

from __future__ import annotations

from typing import TypeAlias

from sluice.policy import Concurrency, RateLimit, RetryBudgetPolicy
from sluice.resilience import (
    Backend,
    BreakerPolicy,
    CircuitBreaker,
    ConcurrencyLimiter,
    Freezes,
    GCRALimiter,
    IdempotencyStore,
    KeySpace,
    OutagePolicy,
    RetryBudget,
    SlidingLogLimiter,
)
from sluice.resilience.adaptive import AdaptiveGCRALimiter, AdaptiveRate
from sluice.resilience.clock import SYSTEM, Clock

__all__ = ["SLIDING_MARGIN", "Limiter", "ResilienceCache"]

#: seconds a sliding-window admission counts beyond its period in the worker (SlidingLogLimiter's
#: ``margin``): the spread between a task's admission and its request's arrival at the upstream (the
#: event loop, a connection set-up), so the upstream's own window sees at most the limit too. Measured
#: (tests/throttle/test_fleet_throttle.py, 3 workers at concurrency 32, a 20/s upstream): 0.05 s let
#: 3-9 of 200 calls get a 429, 0.1 s 0-4, 0.15 s none in 3 runs; 0.2 s keeps a margin over that. The
#: cost: a sustained rate of ``limit`` per ``period + 0.2 s`` (50/s sliding: about 41.7/s at most)
SLIDING_MARGIN = 0.2

Limiter: TypeAlias = GCRALimiter | SlidingLogLimiter  # AdaptiveGCRALimiter is a GCRALimiter


class ResilienceCache:
    """Rate limiters by (window or "adaptive", limit, period, burst), adaptive rates by (limit, period), the
    fleet's freezes, breakers and retry budgets by name, semaphores by task, dedup stores by (lease, ttl)."""

    def __init__(self, redis: Backend, keys: KeySpace, *, clock: Clock = SYSTEM) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.limiters: dict[tuple[str, int, float, int], Limiter] = {}
        self.adaptives: dict[tuple[int, float], AdaptiveRate] = {}
        self.freezes = Freezes(redis, keys=keys, clock=clock)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.sems: dict[str, ConcurrencyLimiter] = {}
        self.stores: dict[tuple[float, float], IdempotencyStore] = {}
        self.budgets: dict[str, RetryBudget] = {}

    def limiter(self, rate: RateLimit) -> Limiter:
        """The limiter of ``rate``'s shape: a GCRA one, GCRA at the adaptive rate (``adaptive``), or the
        exact sliding log (``window="sliding"``)."""
        shape = ("adaptive" if rate.adaptive else rate.window, rate.limit, rate.period, rate.effective_burst)
        lim = self.limiters.get(shape)
        if lim is None:
            if rate.adaptive:
                lim = AdaptiveGCRALimiter(
                    self.redis,
                    self.adaptive(rate),
                    burst=rate.effective_burst,
                    keys=self.keys,
                    coalesce=True,
                    clock=self.clock.monotonic,
                    sleep=self.clock.sleep,
                )
            elif rate.window == "sliding":
                lim = SlidingLogLimiter(
                    self.redis,
                    rate.rate,
                    margin=SLIDING_MARGIN,
                    keys=self.keys,
                    coalesce=True,
                    clock=self.clock.monotonic,
                    sleep=self.clock.sleep,
                )
            else:
                lim = GCRALimiter(
                    self.redis,
                    rate.rate,
                    burst=rate.effective_burst,
                    keys=self.keys,
                    coalesce=True,  # concurrent decisions share one pipeline
                    clock=self.clock.monotonic,
                    sleep=self.clock.sleep,
                )
            self.limiters[shape] = lim
        return lim

    def adaptive(self, rate: RateLimit) -> AdaptiveRate:
        """The fleet's adaptive (AIMD) rate of ``rate``'s limit and period, its defaults (halved by a
        throttle, a tenth of the limit back each quiet 5 s, cuts at most once a second)."""
        shape = (rate.limit, rate.period)
        found = self.adaptives.get(shape)
        if found is None:
            found = self.adaptives[shape] = AdaptiveRate(self.redis, rate.rate, keys=self.keys)
        return found

    def breaker(self, name: str, policy: BreakerPolicy) -> CircuitBreaker:
        b = self.breakers.get(name)
        if b is None:
            b = self.breakers[name] = CircuitBreaker(
                self.redis, name, policy, keys=self.keys, clock=self.clock.monotonic
            )
        return b

    def sem(self, task: str, c: Concurrency) -> ConcurrencyLimiter:
        sem = self.sems.get(task)
        if sem is None:
            sem = self.sems[task] = ConcurrencyLimiter(
                self.redis,
                c.limit,
                lease=c.lease,
                keys=self.keys,
                clock=self.clock.monotonic,
                sleep=self.clock.sleep,
            )
        return sem

    def budget(self, name: str, p: RetryBudgetPolicy, outage: OutagePolicy) -> RetryBudget:
        b = self.budgets.get(name)
        if b is None:
            b = self.budgets[name] = RetryBudget(
                self.redis,
                name,
                ratio=p.ratio,
                min_per_second=p.min_per_second,
                window=p.window,
                keys=self.keys,
                outage=outage,
                clock=self.clock.monotonic,
            )
        return b

    def store(self, lease: float, ttl: float) -> IdempotencyStore:
        s = self.stores.get((lease, ttl))
        if s is None:
            s = self.stores[(lease, ttl)] = IdempotencyStore(
                self.redis,
                lease=lease,
                result_ttl=ttl,
                keys=self.keys,
                coalesce=True,  # concurrent claims (and completes) share one pipeline
                clock=self.clock.monotonic,
            )
        return s

    async def aclose(self) -> None:
        """Wait for the rate-limit decisions and claims still on the wire (the Redis client is the caller's)."""
        for lim in self.limiters.values():
            await lim.aclose()
        for store in self.stores.values():
            await store.aclose()
