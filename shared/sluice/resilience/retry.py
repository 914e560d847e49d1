"""Retry policies: small frozen dataclasses, a pure next-delay function, tenacity underneath.

A :class:`RetryPolicy` holds *what* to retry and *how long* to wait; a backoff
(:class:`ExponentialBackoff` with full jitter by default, :class:`DecorrelatedJitter`,
:class:`FixedBackoff`) computes delays. :func:`next_delay` is the whole decision, a pure function of
the policy, the attempt count, the error, the elapsed time, the last delay and a random source.
:meth:`RetryPolicy.call` runs a coroutine function under the policy with ``tenacity.AsyncRetrying``;
clock, sleep and random source are injected, and an optional fleet :class:`RetryBudget` is asked
before each retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar

import tenacity

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from .budget import RetryBudget

__all__ = [
    "Backoff",
    "DecorrelatedJitter",
    "ExponentialBackoff",
    "FixedBackoff",
    "RandomSource",
    "RetryPolicy",
    "next_delay",
]

P = ParamSpec("P")
T = TypeVar("T")


def _check(what: str, *, initial: float, multiplier: float = 1.0, cap: float = 0.0) -> None:
    """Delays are finite and not negative, and they never shrink from one attempt to the next."""
    if not (math.isfinite(initial) and initial >= 0 and math.isfinite(multiplier) and multiplier >= 1):
        raise ConfigError(f"{what}: need a finite initial >= 0 and a finite multiplier >= 1")
    if not cap >= 0:  # inf is a cap that never bites; nan is refused
        raise ConfigError(f"{what}: cap must be >= 0, not {cap!r}")


class RandomSource(Protocol):
    """What the backoffs need of a random source: ``random.Random`` fits."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``initial * multiplier**(n-1)`` capped at ``cap``; jitter ``full`` (AWS), ``equal`` or ``none``."""

    initial: float = 0.1
    multiplier: float = 2.0
    cap: float = 30.0
    jitter: Literal["full", "equal", "none"] = "full"

    def __post_init__(self) -> None:
        _check("ExponentialBackoff", initial=self.initial, multiplier=self.multiplier, cap=self.cap)
        if self.jitter not in ("full", "equal", "none"):
            raise ConfigError(f"ExponentialBackoff: jitter must be full, equal or none, not {self.jitter!r}")

    def delay(self, attempt: int, previous: float | None, rng: RandomSource) -> float:
        base = min(self.cap, self.initial * self.multiplier ** (attempt - 1))
        if self.jitter == "full":
            return rng.random() * base
        if self.jitter == "equal":
            return base / 2 + rng.random() * base / 2
        return base


@dataclass(frozen=True, slots=True)
class DecorrelatedJitter:
    """AWS decorrelated jitter: uniform between ``initial`` and ``multiplier`` times the last delay, capped."""

    initial: float = 0.1
    multiplier: float = 3.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        _check("DecorrelatedJitter", initial=self.initial, multiplier=self.multiplier, cap=self.cap)

    def delay(self, attempt: int, previous: float | None, rng: RandomSource) -> float:
        high = max(self.initial, (previous or self.initial) * self.multiplier)
        return min(self.cap, self.initial + rng.random() * (high - self.initial))


@dataclass(frozen=True, slots=True)
class FixedBackoff:
    """The same delay every time."""

    seconds: float = 1.0

    def __post_init__(self) -> None:
        _check("FixedBackoff", initial=self.seconds)

    def delay(self, attempt: int, previous: float | None, rng: RandomSource) -> float:
        return self.seconds


Backoff = ExponentialBackoff | DecorrelatedJitter | FixedBackoff


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry and how long to wait.

    ``max_attempts`` counts every attempt, the first included (``None``: no limit). ``deadline`` is
    seconds from the first attempt: no retry is planned whose wait would end past it. An error with
    a numeric ``retry_after`` attribute (every :class:`~sluice.resilience.Rejected` has one) is not
    retried sooner than that when ``honour_retry_after`` (``inf``: not retried at all).
    ``never_retry_on`` wins over ``retry_on``. ``asyncio.CancelledError`` is never retried.
    """

    max_attempts: int | None = 3
    deadline: float | None = None
    backoff: Backoff = ExponentialBackoff()
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    never_retry_on: tuple[type[BaseException], ...] = ()
    honour_retry_after: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.max_attempts is None and self.deadline is None:
            raise ConfigError("a retry policy needs max_attempts or a deadline")
        if self.deadline is not None and not self.deadline >= 0:
            raise ConfigError(f"deadline must be >= 0 seconds, not {self.deadline!r}")

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed: policies compose by small edits of a shared base."""
        return dataclasses.replace(self, **changes)

    def retrying(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: RandomSource | None = None,
        budget: RetryBudget | None = None,
    ) -> tenacity.AsyncRetrying:
        """A fresh ``tenacity.AsyncRetrying`` for one call under this policy (re-raises the last error).

        With a ``budget``, the first attempt is recorded as a call and each retry must be granted by it.
        """
        source: RandomSource = rng if rng is not None else random.Random()
        state: dict[str, float] = {}

        async def before(rs: tenacity.RetryCallState) -> None:
            if rs.attempt_number == 1:
                state["start"] = clock()
                if budget is not None:
                    await budget.record_call()

        async def should_retry(rs: tenacity.RetryCallState) -> bool:
            assert rs.outcome is not None
            error = rs.outcome.exception()
            if error is None:
                return False
            delay = next_delay(
                self,
                rs.attempt_number,
                error,
                elapsed=clock() - state["start"],
                previous_delay=state.get("previous"),
                rng=source,
            )
            if delay is None or (budget is not None and not await budget.try_retry()):
                return False
            state["previous"] = delay
            return True

        def wait(rs: tenacity.RetryCallState) -> float:
            return state["previous"]

        return tenacity.AsyncRetrying(
            sleep=sleep,
            stop=tenacity.stop_never,
            wait=wait,
            retry=should_retry,
            before=before,
            reraise=True,
        )

    async def call(
        self,
        fn: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await fn(*args, **kwargs)`` with retries (default clock, sleep and random source)."""
        result: T = await self.retrying()(fn, *args, **kwargs)
        return result


def next_delay(
    policy: RetryPolicy,
    attempt: int,
    error: BaseException,
    *,
    elapsed: float,
    previous_delay: float | None,
    rng: RandomSource,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` after ``attempt`` failed with ``error``; ``None``: stop."""
    if isinstance(error, (asyncio.CancelledError, *policy.never_retry_on)):
        return None
    if not isinstance(error, policy.retry_on):
        return None
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        return None
    delay = policy.backoff.delay(attempt, previous_delay, rng)
    asked = getattr(error, "retry_after", None) if policy.honour_retry_after else None
    if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
        if math.isinf(asked):
            return None
        delay = max(delay, float(asked))
    if policy.deadline is not None and elapsed + delay > policy.deadline:
        return None
    return delay
