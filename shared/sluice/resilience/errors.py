"""Errors of the resilience primitives, all under :class:`sluice.errors.ResilienceError`.

The tree::

    ResilienceError                 (sluice.errors)
    ├── BackendUnavailable          Redis unreachable or too slow, and the policy is fail closed
    ├── Rejected                    a primitive said no; ``retry_after`` says when to ask again
    │   ├── RateLimited             a rate limiter refused (or ``acquire`` ran out of time)
    │   ├── ConcurrencyLimited      no concurrency slot came free in time
    │   ├── CircuitOpen             the circuit breaker is open (or out of half-open permits)
    │   └── RetryBudgetExhausted    the fleet's retry budget has no retry left
    ├── LeaseLost                   a concurrency lease expired or was taken back while held
    └── ClaimLost                   an idempotency claim expired before complete() or release()

Every :class:`Rejected` carries ``retry_after`` (seconds, ``math.inf`` for "never"), which a
:class:`~sluice.resilience.RetryPolicy` honours as a Retry-After.
"""

from __future__ import annotations

import math

from sluice.errors import ResilienceError

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "ClaimLost",
    "ConcurrencyLimited",
    "LeaseLost",
    "RateLimited",
    "Rejected",
    "ResilienceError",
    "RetryBudgetExhausted",
]


class BackendUnavailable(ResilienceError):
    """Redis did not answer in time (or refused the connection) and the policy is fail closed."""


class Rejected(ResilienceError):
    """A primitive refused; ask again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = math.inf) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Rejected):
    """A rate limiter refused."""


class ConcurrencyLimited(Rejected):
    """No concurrency slot became free within the timeout."""


class CircuitOpen(Rejected):
    """The circuit breaker is open, or half-open with no trial permit left."""


class RetryBudgetExhausted(Rejected):
    """The shared retry budget allows no further retry now."""


class LeaseLost(ResilienceError):
    """A concurrency lease expired (or was reclaimed) while its holder still held it."""


class ClaimLost(ResilienceError):
    """An idempotency claim expired, or was taken over, before it was completed or released."""
