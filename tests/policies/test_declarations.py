"""Policy declarations: parsing, checking, the decorator, idempotency keys, delay hops (no broker)."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

from sluice import task
from sluice.errors import ConfigError, TaskDefinitionError
from sluice.policy import (
    Breaker,
    Concurrency,
    Idempotency,
    RateLimit,
    RetryBudgetPolicy,
    TaskPolicy,
    parse_duration,
)
from sluice.protocol import TaskMessage
from sluice.resilience import FakeClock, MemoryBackend, Rate, RetryBudget, RetryPolicy
from sluice.topology import next_hop


class P(BaseModel):
    tenant: str = "a"


@pytest.mark.parametrize(
    ("spec", "limit", "period"),
    [
        ("100/s", 100, 1.0),
        ("6000/min", 6000, 60.0),
        ("10/5s", 10, 5.0),
        ("1000/h", 1000, 3600.0),
        (" 3 / d", 3, 86400.0),
    ],
)
def test_rates_parse(spec: str, limit: int, period: float) -> None:
    r = RateLimit.parse(spec, burst=7)
    assert (r.limit, r.period, r.burst) == (limit, period, 7)
    assert RateLimit.parse(str(r)) == RateLimit(limit, period)


@pytest.mark.parametrize("spec", ["", "100", "0/s", "10/q", "-1/s", "1.5/s", "s/10"])
def test_bad_rates_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        RateLimit.parse(spec)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1500ms", 1.5), ("2h", 7200.0), ("1d", 86400.0), ("2.5", 2.5), (3, 3.0)],
)
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "abc", "1e9999"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_decorator_builds_the_policy() -> None:
    retry = RetryPolicy(max_attempts=5)

    @task(
        "t.p",
        rate_limit="100/s",
        concurrency=3,
        timeout="30s",
        retry=retry,
        breaker="stripe",
        idempotency=True,
    )
    async def handler(p: P) -> None: ...

    assert handler.policy == TaskPolicy(
        rate_limit=RateLimit(100, 1.0),
        concurrency=Concurrency(3),
        timeout=30.0,
        retry=retry,
        breaker=Breaker("stripe"),
        idempotency=Idempotency(),
    )
    assert not handler.policy.empty


def test_plain_task_has_an_empty_policy() -> None:
    @task("t.plain")
    async def handler(p: P) -> None: ...

    assert handler.policy.empty


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_limit": "fast"},
        {"timeout": "0s"},
        {"concurrency": 0},
        {"breaker": "a{b}"},
        {"rate_limit": "5/s/x"},
    ],
)
def test_bad_declarations_fail_at_definition(kwargs: dict[str, object]) -> None:
    with pytest.raises((TaskDefinitionError, ConfigError)):

        @task("t.bad", **kwargs)  # type: ignore[arg-type]
        async def handler(p: P) -> None: ...


def test_idempotency_keys() -> None:
    msg = TaskMessage("t", {"order": {"id": 7}, "user": "ada"}, idempotency_key="hdr")
    assert Idempotency().key_for(msg) == "hdr"
    assert Idempotency(fields=("order.id", "user")).key_for(msg) == "7|ada"
    assert Idempotency(fields=("missing",)).key_for(msg) is None
    assert Idempotency().key_for(TaskMessage("t", {})) is None


@pytest.mark.parametrize(
    ("remaining", "tier"),
    [(0, None), (500, None), (501, 1000), (1400, 1000), (1500, 2000), (3000, 2000), (70_000, 64_000)],
)
def test_delay_hops_stay_within_half_a_second(remaining: int, tier: int | None) -> None:
    assert next_hop(remaining) == tier


def test_a_long_delay_arrives_within_the_slack() -> None:
    for remaining in (600, 1499, 2600, 9_999, 100_000, 200_000_000):
        left, hops = remaining, 0
        while (t := next_hop(left)) is not None:
            left -= t
            hops += 1
        assert -500 <= left <= 500, (remaining, left)
        assert hops <= 40


def test_a_rate_limit_declares_the_limiters_rate() -> None:
    """One way from the declaration to the primitive: ``RateLimit.rate`` is the ``Rate`` the limiter gets."""
    declared = RateLimit.parse("6000/min", burst=20, key="tenant")
    assert declared.rate == Rate(6000, 60.0)
    assert (declared.rate.units_per_second, declared.rate.interval) == (100.0, 0.01)
    assert (declared.rate.limit, declared.rate.period) == (declared.limit, declared.period)


@pytest.mark.parametrize(
    ("limit", "period"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -2.0), (1, math.inf), (1, math.nan)]
)
def test_a_rate_and_a_rate_limit_refuse_the_same_pairs_alike(limit: int, period: float) -> None:
    with pytest.raises(ConfigError, match=r"^bad rate \S+s: need limit >= 1 and a finite period > 0$"):
        Rate(limit, period)
    with pytest.raises(ConfigError, match=r"^bad rate limit \S+s: need limit >= 1 and a finite period > 0$"):
        RateLimit(limit, period)


def test_a_declared_retry_budget_has_the_primitives_defaults() -> None:
    declared = RetryBudgetPolicy()
    primitive = RetryBudget(MemoryBackend(clock=FakeClock()), "b")
    fields = ("ratio", "min_per_second", "window")
    assert [getattr(declared, f) for f in fields] == [getattr(primitive, f) for f in fields]
    assert (declared.ratio, declared.min_per_second, declared.window) == (0.2, 1.0, 10)


@pytest.mark.parametrize(
    "bad", [{"ratio": -0.1}, {"ratio": math.nan}, {"min_per_second": -1.0}, {"window": 0}]
)
def test_a_retry_budget_and_its_declaration_refuse_the_same_values_alike(bad: dict[str, float]) -> None:
    message = r"^bad retry budget \(.*\): need ratio >= 0, min_per_second >= 0 and window >= 1 s$"
    with pytest.raises(ConfigError, match=message):
        RetryBudget(MemoryBackend(clock=FakeClock()), "b", **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        RetryBudgetPolicy(**bad)  # type: ignore[arg-type]


def test_an_unknown_policy_keyword_is_a_type_error_as_before() -> None:
    """``@task`` takes the policies as ``**PolicyOptions``: a misspelt one is still refused at once."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'rate_limt'"):
        task("t.typo", rate_limt="5/s")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'retries'"):
        TaskPolicy.build(retries=3)  # type: ignore[call-arg]
