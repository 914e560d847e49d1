"""Retry policies: exact delay sequences with a controlled random source; tenacity retries the right errors."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluice.resilience import (
    DecorrelatedJitter,
    ExponentialBackoff,
    FixedBackoff,
    RateLimited,
    RetryPolicy,
    next_delay,
)


class Script:
    """A random source that plays back given values."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


class FakeTime:
    """Clock and sleep for the tenacity path: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def delays(
    policy: RetryPolicy, rng: object, error: BaseException | None = None, attempts: int = 10
) -> list[float]:
    out: list[float] = []
    previous = None
    for attempt in range(1, attempts + 1):
        d = next_delay(
            policy,
            attempt,
            error or Flaky(),
            elapsed=sum(out),
            previous_delay=previous,
            rng=rng,  # type: ignore[arg-type]
        )
        if d is None:
            break
        out.append(d)
        previous = d
    return out


def test_full_jitter_is_uniform_below_the_capped_exponential() -> None:
    policy = RetryPolicy(max_attempts=7, backoff=ExponentialBackoff(initial=0.1, multiplier=2, cap=1.0))
    # a random source answering 0.5, then 1.0 (the top of the range): half, then all of the ceiling
    assert delays(policy, Script(0.5, 0.5, 0.5, 0.5, 1.0, 1.0)) == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 1.0, 1.0]
    )


def test_other_jitters_and_fixed() -> None:
    equal = RetryPolicy(
        max_attempts=4, backoff=ExponentialBackoff(initial=1, multiplier=3, cap=100, jitter="equal")
    )
    assert delays(equal, Script(0.0, 1.0, 0.5)) == pytest.approx([0.5, 3.0, 6.75])
    none = RetryPolicy(
        max_attempts=4, backoff=ExponentialBackoff(initial=1, multiplier=3, cap=5, jitter="none")
    )
    assert delays(none, Script()) == [1, 3, 5]
    fixed = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.25))
    assert delays(fixed, Script()) == [0.25, 0.25]
    # decorrelated: between initial and 3x the previous delay, capped
    decorrelated = RetryPolicy(max_attempts=5, backoff=DecorrelatedJitter(initial=1, multiplier=3, cap=10))
    assert delays(decorrelated, Script(0.5, 1.0, 1.0, 0.0)) == pytest.approx([2.0, 6.0, 10.0, 1.0])


def test_seeded_sequences_repeat_exactly() -> None:
    policy = RetryPolicy(max_attempts=8)
    first = delays(policy, random.Random(42))
    assert first == delays(policy, random.Random(42))
    assert first != delays(policy, random.Random(43))
    assert len(first) == 7
    assert all(0 <= d <= min(30.0, 0.1 * 2**i) for i, d in enumerate(first))


def test_error_types_attempts_and_deadline_stop_retries() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(Flaky,), never_retry_on=(RateLimited,))
    rng = random.Random(1)
    assert next_delay(policy, 1, Fatal(), elapsed=0, previous_delay=None, rng=rng) is None
    assert next_delay(policy, 1, RateLimited("no", 0.1), elapsed=0, previous_delay=None, rng=rng) is None
    assert next_delay(policy, 1, asyncio.CancelledError(), elapsed=0, previous_delay=None, rng=rng) is None
    assert next_delay(policy, 5, Flaky(), elapsed=0, previous_delay=None, rng=rng) is None
    assert next_delay(policy, 4, Flaky(), elapsed=0, previous_delay=None, rng=rng) is not None
    fixed = RetryPolicy(max_attempts=None, deadline=1.0, backoff=FixedBackoff(0.3))
    assert delays(fixed, Script(), attempts=100) == [0.3, 0.3, 0.3]


def test_retry_after_carried_by_the_error_is_honoured() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.1))
    rng = Script()
    assert (
        next_delay(policy, 1, RateLimited("slow down", 2.5), elapsed=0, previous_delay=None, rng=rng) == 2.5
    )
    assert (
        next_delay(policy, 1, RateLimited("never", float("inf")), elapsed=0, previous_delay=None, rng=rng)
        is None
    )
    ignoring = policy.replace(honour_retry_after=False)
    assert (
        next_delay(ignoring, 1, RateLimited("slow down", 2.5), elapsed=0, previous_delay=None, rng=rng) == 0.1
    )
    past_deadline = policy.replace(deadline=2.0)
    assert (
        next_delay(past_deadline, 1, RateLimited("x", 2.5), elapsed=0, previous_delay=None, rng=rng) is None
    )


def test_policies_are_frozen_and_compose() -> None:
    base = RetryPolicy(max_attempts=4, retry_on=(Flaky,))
    slower = base.replace(backoff=ExponentialBackoff(initial=1.0))
    assert base.backoff == ExponentialBackoff()
    assert slower.retry_on == (Flaky,)
    assert slower.backoff.initial == 1.0  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        base.max_attempts = 9  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=None)


async def test_tenacity_retries_retryable_errors_with_the_computed_delays() -> None:
    time = FakeTime()
    policy = RetryPolicy(max_attempts=5, retry_on=(Flaky,), backoff=ExponentialBackoff(initial=0.1))
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise Flaky
        return "ok"

    result: str = await policy.retrying(sleep=time.sleep, clock=time.clock, rng=random.Random(7))(flaky)
    assert result == "ok"
    assert calls == 4
    assert time.slept == pytest.approx(delays(policy.replace(max_attempts=4), random.Random(7)))


async def test_tenacity_does_not_retry_other_errors_and_reraises_the_last() -> None:
    time = FakeTime()
    policy = RetryPolicy(max_attempts=3, retry_on=(Flaky,))
    calls = 0

    async def fatal() -> None:
        nonlocal calls
        calls += 1
        raise Fatal

    with pytest.raises(Fatal):
        await policy.retrying(sleep=time.sleep, clock=time.clock)(fatal)
    assert calls == 1

    async def always_flaky() -> None:
        nonlocal calls
        calls += 1
        raise Flaky

    calls = 0
    with pytest.raises(Flaky):
        await policy.retrying(sleep=time.sleep, clock=time.clock)(always_flaky)
    assert calls == 3
    assert len(time.slept) == 2


async def test_tenacity_honours_the_deadline_on_the_injected_clock() -> None:
    time = FakeTime()
    policy = RetryPolicy(max_attempts=None, deadline=1.0, backoff=FixedBackoff(0.4))
    calls = 0

    async def slow_flaky() -> None:
        nonlocal calls
        calls += 1
        time.now += 0.1  # each attempt takes 100 ms
        raise Flaky

    with pytest.raises(Flaky):
        await policy.retrying(sleep=time.sleep, clock=time.clock)(slow_flaky)
    # attempts end at 0.1, 0.6, 1.1 (no retry past 1.0): 3 attempts, 2 sleeps
    assert calls == 3
    assert time.slept == [0.4, 0.4]


async def test_call_uses_the_real_sleep() -> None:
    attempts = []

    async def once_flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise Flaky
        return 7

    assert await RetryPolicy(backoff=FixedBackoff(0.001)).call(once_flaky) == 7
    assert len(attempts) == 2
