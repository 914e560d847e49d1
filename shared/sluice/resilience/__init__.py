"""sluice.resilience: fleet-wide rate limits, concurrency limits, retries, retry budgets, circuit
breakers and dedup, on Redis alone.

Every primitive is async (redis-py asyncio), shared by every process pointing at the same Redis,
decides in one Lua script (one round trip) on Redis' clock, and follows an explicit outage policy
(:class:`FailClosed` or :class:`FailOpen`) when Redis is unreachable. See ``docs/resilience.md``.

    limiter = GCRALimiter(redis, Rate.per_second(100), burst=20)
    async with limiter.acquire("stripe"):
        ...
"""

from __future__ import annotations

from ._limiter import Acquisition, Decision, Rate
from .breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit
from .budget import RetryBudget
from .concurrency import ConcurrencyLimiter, Lease
from .errors import (
    BackendUnavailable,
    CircuitOpen,
    ClaimLost,
    ConcurrencyLimited,
    LeaseLost,
    RateLimited,
    Rejected,
    ResilienceError,
    RetryBudgetExhausted,
)
from .gcra import GCRALimiter
from .idempotency import Claimed, ClaimResult, Done, IdempotencyStore, InProgress
from .keys import KeySpace
from .outage import FailClosed, FailOpen, OutagePolicy, OutageStats
from .retry import (
    Backoff,
    DecorrelatedJitter,
    ExponentialBackoff,
    FixedBackoff,
    RandomSource,
    RetryPolicy,
    next_delay,
)
from .window import SlidingWindowLimiter

__all__ = [
    "Acquisition",
    "BackendUnavailable",
    "Backoff",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "ClaimLost",
    "ClaimResult",
    "Claimed",
    "ConcurrencyLimited",
    "ConcurrencyLimiter",
    "Decision",
    "DecorrelatedJitter",
    "Done",
    "ExponentialBackoff",
    "FailClosed",
    "FailOpen",
    "FixedBackoff",
    "GCRALimiter",
    "IdempotencyStore",
    "InProgress",
    "KeySpace",
    "Lease",
    "LeaseLost",
    "OutagePolicy",
    "OutageStats",
    "Permit",
    "RandomSource",
    "Rate",
    "RateLimited",
    "Rejected",
    "ResilienceError",
    "RetryBudget",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "SlidingWindowLimiter",
    "next_delay",
]
