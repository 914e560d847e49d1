"""sluice.resilience: fleet-wide rate limits, concurrency limits, retries, retry budgets, circuit
breakers and dedup, on Redis alone.

Every primitive is async (redis-py asyncio), shared by every process pointing at the same Redis,
decides in one Lua script (one round trip) on Redis' clock, and follows an explicit outage policy
(:class:`FailClosed` or :class:`FailOpen`) when Redis is unreachable. See ``docs/resilience.md``.

    limiter = GCRALimiter(redis, Rate.per_second(100), burst=20)
    async with limiter.acquire("stripe"):
        ...

Every primitive also runs without Redis, on the in-memory backend and a clock a test moves by hand
(:class:`MemoryBackend`, :class:`FakeClock`; modules ``sluice.resilience.memory`` and ``.clock``):

    limiter = GCRALimiter(MemoryBackend(clock=FakeClock()), Rate.per_second(100), burst=20)

For a strict "never more than N in any window" there is :class:`SlidingLogLimiter`; :class:`Freezes`
stops a name fleet-wide after an upstream's 429 (the limiters honour it in their own script with
``freeze=``), and :class:`AdaptiveRate` keeps a fleet-wide AIMD rate.
"""

from __future__ import annotations

from ._backend import Backend
from ._limiter import Acquisition, Decision, Rate
from .adaptive import AdaptiveRate, AdaptiveState
from .breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit, breaker_states
from .budget import RetryBudget
from .clock import Clock, FakeClock, SystemClock
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
from .freeze import Freeze, Freezes
from .gcra import GCRALimiter
from .idempotency import Claimed, ClaimResult, Done, IdempotencyStore, InProgress
from .keys import KeySpace
from .memory import MemoryBackend
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
from .sliding import SlidingLogLimiter
from .window import SlidingWindowLimiter

__all__ = [
    "Acquisition",
    "AdaptiveRate",
    "AdaptiveState",
    "Backend",
    "BackendUnavailable",
    "Backoff",
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "ClaimLost",
    "ClaimResult",
    "Claimed",
    "Clock",
    "ConcurrencyLimited",
    "ConcurrencyLimiter",
    "Decision",
    "DecorrelatedJitter",
    "Done",
    "ExponentialBackoff",
    "FailClosed",
    "FailOpen",
    "FakeClock",
    "FixedBackoff",
    "Freeze",
    "Freezes",
    "GCRALimiter",
    "IdempotencyStore",
    "InProgress",
    "KeySpace",
    "Lease",
    "LeaseLost",
    "MemoryBackend",
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
    "SlidingLogLimiter",
    "SlidingWindowLimiter",
    "SystemClock",
    "breaker_states",
    "next_delay",
]
