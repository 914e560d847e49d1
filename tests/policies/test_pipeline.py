"""Task pipelines in process, against the real Redis: each decision of docs/policies.md.

(Was the policy gate's test: the same decisions, asserted on the outcome model; the fake-clock unit tests
of each step are in test_steps.py.)"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import task
from sluice.policy import Breaker, Idempotency, RateLimit, RetryBudgetPolicy
from sluice.protocol import H_ATTEMPT, H_ETA, H_FIRST_FAILURE_AT, TaskMessage, now_ms
from sluice.resilience import BreakerPolicy, BreakerState, Decision, FixedBackoff, RetryPolicy
from sluice.tasks import Task
from sluice_worker.delays import republish
from sluice_worker.failures import RetryOrDeadLetter
from sluice_worker.outcome import ACK, DEDUPLICATED, DeadLettered, Deferred, Outcome, Retry
from sluice_worker.policies import Pipeline, Policies, RateLimitStep, Step, batch_size


class T(BaseModel):
    tenant: str = "a"
    n: int = 0


@pytest.fixture
async def gate(redis_url: str, unique: str) -> AsyncIterator[Policies]:
    client = aioredis.Redis.from_url(redis_url)
    g = Policies(client, unique)
    yield g
    await g.aclose()
    keys = [k async for k in client.scan_iter(f"{unique}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class Call:
    """Stands in for the Invoker (the handler's call answers its failure); counts the calls."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.called = False

    async def __call__(self, task: Task, args: list[object]) -> BaseException | None:
        self.called = True
        return self.fail


# each worker's pipelines, built once per task (as the runner does) around a Call
PIPELINES: weakref.WeakKeyDictionary[Policies, dict[str, tuple[Pipeline, Call]]] = weakref.WeakKeyDictionary()


async def _run(gate: Policies, t: Task, msg: TaskMessage, fail: Exception | None = None) -> Outcome:
    """The pipeline's outcome; records in ``CALLED`` whether the handler was called."""
    built = PIPELINES.setdefault(gate, {})
    if t.name not in built:
        call = Call()
        built[t.name] = (gate.pipeline(t, gate.failures, call), call)  # type: ignore[arg-type]
    pipeline, call = built[t.name]
    call.fail, call.called = fail, False
    out = await pipeline.run(msg, [])
    CALLED.append(call.called)
    return out


def _step(gate: Policies, t: Task, kind: type[Step]) -> Step:
    return next(s for s in PIPELINES[gate][t.name][0].steps if isinstance(s, kind))


CALLED: list[bool] = []


async def test_rate_limit_per_tenant_defers_without_an_attempt(gate: Policies) -> None:
    @task("g.rate", rate_limit=RateLimit(1, 10.0, key="tenant"))
    async def h(p: T) -> None: ...

    assert await _run(gate, h, TaskMessage("g.rate", {"tenant": "a"})) is ACK
    second = await _run(gate, h, TaskMessage("g.rate", {"tenant": "a"}))
    assert isinstance(second, Deferred) and second.reason == "rate_limited"
    assert second.metric == "deferred_limit"
    assert CALLED[-1] is False
    copy = republish(second, now_ms())
    assert H_ATTEMPT not in copy.headers, "a deferral spends no attempt"
    assert copy.tier_ms is not None and copy.tier_ms >= 8000  # about 10 s: the next unit
    assert await _run(gate, h, TaskMessage("g.rate", {"tenant": "b"})) is ACK, "each tenant has its own"


async def test_idempotency_skips_what_was_done(gate: Policies) -> None:
    @task("g.idem", idempotency=Idempotency(fields=("n",)))
    async def h(p: T) -> None: ...

    assert await _run(gate, h, TaskMessage("g.idem", {"n": 1})) is ACK
    assert await _run(gate, h, TaskMessage("g.idem", {"n": 1})) is DEDUPLICATED  # acked, counted as such
    assert CALLED[-2:] == [True, False], "the duplicate is acked without running"
    assert DEDUPLICATED.metric == "deduplicated"
    # a failed run releases its claim: the next one runs
    failed = await _run(gate, h, TaskMessage("g.idem", {"n": 2}), ValueError("no"))
    assert isinstance(failed, DeadLettered)
    assert await _run(gate, h, TaskMessage("g.idem", {"n": 2})) is ACK
    assert CALLED[-2:] == [True, True], "only the duplicate was skipped"


async def test_open_breaker_defers_and_half_open_lets_trials_through(gate: Policies) -> None:
    policy = BreakerPolicy(minimum_calls=2, failure_rate=0.5, open_for=1.0, half_open_permits=1)

    @task("g.brk", breaker=Breaker("svc", policy))
    async def h(p: T) -> None: ...

    for _ in range(2):
        assert isinstance(
            await _run(gate, h, TaskMessage("g.brk", {}), ConnectionError("down")), DeadLettered
        )
    deferred = await _run(gate, h, TaskMessage("g.brk", {}))
    assert isinstance(deferred, Deferred) and deferred.reason == "breaker_open"
    assert deferred.metric == "deferred_breaker"
    assert CALLED[-1] is False
    # after open_for the breaker half-opens: its one trial permit runs, succeeds and closes it
    deadline = time.monotonic() + 5
    while (out := await _run(gate, h, TaskMessage("g.brk", {}))) is not ACK:
        assert isinstance(out, Deferred) and out.reason == "breaker_open"
        assert time.monotonic() < deadline, "the breaker never half-opened"
        await asyncio.sleep(0.05)
    assert await gate.cache.breakers["svc"].state() == BreakerState.CLOSED


async def test_retry_then_dead_letter_with_details(gate: Policies) -> None:
    @task("g.retry", retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(3.0)), timeout=5)
    async def h(p: T) -> None: ...

    first = await _run(gate, h, TaskMessage("g.retry", {}), KeyError("k"))
    assert isinstance(first, Retry) and first.metric == "retried"
    copy = republish(first, now_ms())
    assert copy.tier_ms == 2000  # 3 s: the 2 s tier, then a hop
    assert copy.headers[H_ATTEMPT] == 2 == first.attempt
    assert abs(copy.headers[H_ETA] - (now_ms() + 3000)) < 500
    started = copy.headers[H_FIRST_FAILURE_AT]
    last = await _run(gate, h, TaskMessage("g.retry", {}, attempt=2, first_failure_ms=started), KeyError("k"))
    assert isinstance(last, DeadLettered) and last.metric == "failed"
    assert last.headers["x-sluice-error-type"] == "KeyError"
    assert last.headers[H_FIRST_FAILURE_AT] == started
    assert "attempt 2 of 2" in last.detail


async def test_a_task_not_yet_due_is_sent_on(gate: Policies) -> None:
    @task("g.eta", timeout=1)
    async def h(p: T) -> None: ...

    out = await _run(gate, h, TaskMessage("g.eta", {}, eta_ms=now_ms() + 5000))
    assert isinstance(out, Deferred) and out.reason == "eta" and out.metric == "deferred"
    copy = republish(out, now_ms())
    assert copy.tier_ms == 4000 and H_ETA not in copy.headers, "a hop keeps its eta"
    assert await _run(gate, h, TaskMessage("g.eta", {}, eta_ms=now_ms() + 200)) is ACK


def test_without_a_retry_policy_a_failure_is_dead_lettered() -> None:
    @task("g.plain")
    async def h(p: T) -> None: ...

    out = RetryOrDeadLetter().on_error(h, TaskMessage("g.plain", {}), RuntimeError("x"))
    assert isinstance(out, DeadLettered) and out.reason == "handler_error"
    assert "RuntimeError: x" in out.headers["x-sluice-traceback"]


async def test_a_high_rate_takes_units_in_small_batches(gate: Policies) -> None:
    @task("g.fast", rate_limit=RateLimit(100_000, 1.0, burst=1000))
    async def h(p: T) -> None: ...

    assert await _run(gate, h, TaskMessage("g.fast", {})) is ACK
    limiter = gate.cache.limiters[("gcra", 100_000, 1.0, 1000)]
    decisions: list[int] = []
    take = limiter.try_acquire

    async def counted(name: str, cost: int = 1, *, freeze: str | None = None) -> Decision:
        decisions.append(cost)
        return await take(name, cost, freeze=freeze)

    limiter.try_acquire = counted  # type: ignore[method-assign]
    _step(gate, h, RateLimitStep)._units.clear()  # type: ignore[attr-defined]
    for _ in range(
        128
    ):  # units unused after 5 ms are dropped and retaken: a few more decisions, not more units
        assert await _run(gate, h, TaskMessage("g.fast", {})) is ACK
    assert set(decisions) == {64}, "each decision takes 64 units (5 ms of 100,000/s)"
    assert len(decisions) < 128 / 8, len(decisions)


def test_batches_stay_small_and_slow_rates_take_one_unit() -> None:
    assert batch_size(RateLimit(50, 1.0, burst=5)) == 1
    assert batch_size(RateLimit(399, 1.0)) == 1
    assert batch_size(RateLimit(2000, 1.0, burst=10)) == 5
    assert batch_size(RateLimit(1_000_000, 1.0)) == 64


async def test_the_fleet_retry_budget_sends_refused_retries_to_the_dlq(
    gate: Policies, redis_url: str
) -> None:
    """No first attempts yet, ratio 0 and 0.2/s over 10 s: two retries fleet-wide, then the DLQ."""
    budget = RetryBudgetPolicy(ratio=0.0, min_per_second=0.2, window=10)

    @task("g.budget", retry=RetryPolicy(max_attempts=5, backoff=FixedBackoff(1.0)), retry_budget=budget)
    async def h(p: T) -> None: ...

    other = Policies(aioredis.Redis.from_url(redis_url), gate.keys.prefix)  # a second worker
    refused: list[str] = []
    for g in (gate, other):
        g.telemetry.budget_refused = refused.append  # type: ignore[method-assign]
    try:
        first = await _run(gate, h, TaskMessage("g.budget", {}), RuntimeError("upstream down"))
        second = await _run(other, h, TaskMessage("g.budget", {}), RuntimeError("upstream down"))
        assert isinstance(first, Retry) and isinstance(second, Retry)
        for g in (gate, other):
            out = await _run(g, h, TaskMessage("g.budget", {}), RuntimeError("upstream down"))
            assert isinstance(out, DeadLettered) and out.reason == "retry_budget_exhausted"
            assert out.metric == "failed"
            assert "retry budget is spent" in out.detail
            assert out.headers["x-sluice-error-type"] == "RuntimeError"
        assert refused == ["g.budget", "g.budget"], "each worker counted its refusal"
    finally:
        await other.aclose()
        await other.redis.aclose()


async def test_first_attempts_fill_the_retry_budget(gate: Policies) -> None:
    """With ratio 0.5 and no floor, 40 successful first runs buy 20 retries (deposits are batched)."""
    budget = RetryBudgetPolicy(ratio=0.5, min_per_second=0.0, window=10)

    @task("g.budget2", retry=RetryPolicy(max_attempts=9, backoff=FixedBackoff(1.0)), retry_budget=budget)
    async def h(p: T) -> None: ...

    for _ in range(40):
        assert await _run(gate, h, TaskMessage("g.budget2", {})) is ACK
    outs = [
        await _run(gate, h, TaskMessage("g.budget2", {}, attempt=2), RuntimeError("x")) for _ in range(25)
    ]
    assert [isinstance(o, Retry) for o in outs] == [True] * 20 + [False] * 5
