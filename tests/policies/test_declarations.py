"""Policy declarations: parsing, checking, the decorator, idempotency keys, delay hops (no broker)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sluice import task
from sluice.errors import ConfigError, TaskDefinitionError
from sluice.policy import Breaker, Concurrency, Idempotency, RateLimit, TaskPolicy, parse_duration
from sluice.protocol import TaskMessage
from sluice.resilience import RetryPolicy
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
