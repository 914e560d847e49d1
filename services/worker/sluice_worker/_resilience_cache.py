"""The per-worker cache of resilience objects the policy steps use, made once per shape and shared by every
task using it.

One :class:`ResilienceCache` per worker process, over one Redis client (or any backend of
:mod:`sluice.resilience`, e.g. the in-memory one in tests), the deployment's key prefix and the worker's
clock (the primitives' local time: caches, waits, lease heartbeats).
"""

from __future__ import annotations

from sluice.policy import Concurrency, RateLimit, RetryBudgetPolicy
from sluice.resilience import (
    Backend,
    BreakerPolicy,
    CircuitBreaker,
    ConcurrencyLimiter,
    GCRALimiter,
    IdempotencyStore,
    KeySpace,
    OutagePolicy,
    RetryBudget,
)
from sluice.resilience.clock import SYSTEM, Clock

__all__ = ["ResilienceCache"]


class ResilienceCache:
    """Rate limiters by (limit, period, burst), breakers and retry budgets by name, semaphores by task, dedup
    stores by (lease, ttl)."""

    def __init__(self, redis: Backend, keys: KeySpace, *, clock: Clock = SYSTEM) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.limiters: dict[tuple[int, float, int], GCRALimiter] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.sems: dict[str, ConcurrencyLimiter] = {}
        self.stores: dict[tuple[float, float], IdempotencyStore] = {}
        self.budgets: dict[str, RetryBudget] = {}

    def limiter(self, rate: RateLimit) -> GCRALimiter:
        shape = (rate.limit, rate.period, rate.effective_burst)
        lim = self.limiters.get(shape)
        if lim is None:
            lim = self.limiters[shape] = GCRALimiter(
                self.redis,
                rate.rate,
                burst=rate.effective_burst,
                keys=self.keys,
                coalesce=True,  # concurrent decisions share one pipeline
                clock=self.clock.monotonic,
                sleep=self.clock.sleep,
            )
        return lim

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
