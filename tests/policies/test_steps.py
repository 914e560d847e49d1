"""The policy steps on the in-memory backend and a fake clock: no Redis, no real-time wait.

Each pipeline here is built as the runner builds it (``Policies.pipeline``), around a stand-in for the
handler's call; time moves only when a test moves the :class:`~sluice.resilience.FakeClock`.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from sluice import task
from sluice.policy import Breaker, Concurrency, Idempotency, RateLimit
from sluice.protocol import TaskMessage
from sluice.resilience import BreakerPolicy, FakeClock, FixedBackoff, RetryPolicy
from sluice.resilience.memory import MemoryBackend
from sluice.tasks import Task
from sluice_worker.delays import republish
from sluice_worker.failures import RetryOrDeadLetter
from sluice_worker.outcome import ACK, DEDUPLICATED, DeadLettered, Deferred, Outcome, Retry
from sluice_worker.policies import (
    BreakerStep,
    ConcurrencyStep,
    Eta,
    Failure,
    IdempotencyStep,
    Pipeline,
    Policies,
    RateLimitStep,
    bare_pipeline,
)

START = 1_700_000_000.0  # the fake clock's wall time at first (seconds since the epoch)


class T(BaseModel):
    n: int = 0


class Overrides:
    """Stands in for the LimitStore (the in-memory backend has no HGETALL): no override, or one."""

    def __init__(self) -> None:
        self.limits: dict[str, RateLimit] = {}

    async def current(self, name: str) -> RateLimit | None:
        return self.limits.get(name)


class Call:
    """Stands in for the Invoker: answers ``fail`` (``None``: the handler returned), or waits for
    ``release`` first when given one."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.calls = 0
        self.release: asyncio.Event | None = None
        self.running = asyncio.Event()

    async def __call__(self, task: Task, args: list[object]) -> BaseException | None:
        self.calls += 1
        self.running.set()
        if self.release is not None:
            await self.release.wait()
        return self.fail


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def overrides() -> Overrides:
    return Overrides()


@pytest.fixture
def policies(clock: FakeClock, overrides: Overrides) -> Policies:
    return Policies(MemoryBackend(clock=clock), "steps", limits=overrides, clock=clock)  # type: ignore[arg-type]


def pipe(policies: Policies, t: Task, call: Call) -> Pipeline:
    return policies.pipeline(t, policies.failures, call)  # type: ignore[arg-type]


def msg(name: str, n: int = 0, **kw: object) -> TaskMessage:
    return TaskMessage(name, {"n": n}, created_at_ms=int(START * 1000), **kw)  # type: ignore[arg-type]


def test_a_task_without_policies_has_the_due_time_the_override_and_the_failure_step(
    policies: Policies,
) -> None:
    @task("s.plain")
    async def h(p: T) -> None: ...

    plain = pipe(policies, h, Call())
    assert [type(s) for s in plain.steps] == [Eta, RateLimitStep, Failure]
    assert plain._afters_ack == (), "a task without policies runs no after hook when its handler returned"
    assert [type(s) for s in bare_pipeline(h, policies.failures, Call()).steps] == [Eta, Failure]  # type: ignore[arg-type]

    @task("s.all", idempotency=Idempotency(fields=("n",)), concurrency=2, breaker=Breaker("b"))
    async def g(p: T) -> None: ...

    kinds = [type(s) for s in pipe(policies, g, Call()).steps]
    assert kinds == [Eta, RateLimitStep, IdempotencyStep, ConcurrencyStep, BreakerStep, Failure]


async def test_a_task_not_yet_due_is_sent_on_by_the_fake_clock(policies: Policies, clock: FakeClock) -> None:
    @task("s.eta")
    async def h(p: T) -> None: ...

    call = Call()
    p = pipe(policies, h, call)
    out = await p.run(msg("s.eta", eta_ms=int(START * 1000) + 5000), [])
    assert out == Deferred("eta", 5.0) and call.calls == 0
    assert republish(out, int(START * 1000)).tier_ms == 4000
    clock.advance(5)
    assert await p.run(msg("s.eta", eta_ms=int(START * 1000) + 5000), []) is ACK and call.calls == 1


async def test_a_short_rate_limit_wait_is_waited_in_place_on_the_clock(
    policies: Policies, clock: FakeClock
) -> None:
    @task("s.rate", rate_limit=RateLimit(10, 1.0, burst=1))
    async def h(p: T) -> None: ...

    p = pipe(policies, h, Call())
    assert await p.run(msg("s.rate"), []) is ACK
    second = asyncio.create_task(p.run(msg("s.rate"), []))
    await clock.until_sleeping()  # waits 0.1 s (under IN_PLACE) on the clock, not for real
    clock.advance(0.1)
    assert await second is ACK


async def test_a_long_rate_limit_wait_defers_spread_at_the_emission_interval(
    policies: Policies, overrides: Overrides
) -> None:
    @task("s.slow")
    async def h(p: T) -> None: ...

    overrides.limits["s.slow"] = RateLimit(1, 10.0)  # sluice limits set s.slow 1/10s: any task
    p = pipe(policies, h, Call())
    assert await p.run(msg("s.slow"), []) is ACK
    first, second = [await p.run(msg("s.slow"), []) for _ in range(2)]
    assert isinstance(first, Deferred) and first.reason == "rate_limited"
    assert isinstance(second, Deferred) and second.delay == pytest.approx(first.delay + 10.0)
    assert first.metric == "deferred_limit"


async def test_a_duplicate_is_skipped_and_a_running_key_deferred(policies: Policies) -> None:
    @task("s.idem", idempotency=Idempotency(fields=("n",), lease=30.0))
    async def h(p: T) -> None: ...

    call = Call()
    call.release = asyncio.Event()
    p = pipe(policies, h, call)
    running = asyncio.create_task(p.run(msg("s.idem", 1), []))
    await call.running.wait()
    other = await p.run(msg("s.idem", 1), [])
    assert isinstance(other, Deferred) and other.reason == "in_progress" and other.metric == "deferred"
    assert other.delay == pytest.approx(30.0)
    call.release.set()
    assert await running is ACK
    assert await p.run(msg("s.idem", 1), []) is DEDUPLICATED
    assert call.calls == 1


async def test_a_successful_claimed_run_gives_its_lease_back(policies: Policies) -> None:
    """A success completed the claim and dropped the concurrency lease unreleased (the gate's
    ``stack.pop_all()``): the next task of the same kind found no slot (seen failing before)."""

    @task("s.both", idempotency=Idempotency(fields=("n",)), concurrency=Concurrency(1))
    async def h(p: T) -> None: ...

    p = pipe(policies, h, Call())
    assert await p.run(msg("s.both", 1), []) is ACK
    async with asyncio.timeout(5):  # a leaked lease: this acquire would wait on the fake clock for ever
        assert await p.run(msg("s.both", 2), []) is ACK


async def test_a_cancelled_delivery_releases_its_claim_and_lease(policies: Policies) -> None:
    @task("s.cancel", idempotency=Idempotency(fields=("n",)), concurrency=Concurrency(1))
    async def h(p: T) -> None: ...

    call = Call()
    call.release = asyncio.Event()
    p = pipe(policies, h, call)
    running = asyncio.create_task(p.run(msg("s.cancel", 1), []))
    await call.running.wait()
    running.cancel()  # the worker cancels it (a drain past its grace): no outcome
    with pytest.raises(asyncio.CancelledError):
        await running
    call.release.set()
    async with asyncio.timeout(5):
        assert await p.run(msg("s.cancel", 1), []) is ACK, "claim released, lease given back"


async def test_no_slot_defers_the_task_and_its_claim_is_released(
    policies: Policies, clock: FakeClock
) -> None:
    @task("s.pair", idempotency=Idempotency(fields=("n",)), concurrency=Concurrency(1))
    async def h(p: T) -> None: ...

    call = Call()
    call.release = asyncio.Event()
    p = pipe(policies, h, call)
    running = asyncio.create_task(p.run(msg("s.pair", 1), []))
    await call.running.wait()
    waiting = asyncio.create_task(p.run(msg("s.pair", 2), []))
    while not waiting.done():  # the second polls for a slot on the clock, up to IN_PLACE
        await clock.until_sleeping(1)
        clock.jump()
        await asyncio.sleep(0)
    out = await waiting
    assert isinstance(out, Deferred) and out.reason == "concurrency"
    call.release.set()
    assert await running is ACK
    assert await p.run(msg("s.pair", 2), []) is ACK, "the deferred task's claim was released"


async def test_an_open_breaker_defers_until_its_open_time_passed(
    policies: Policies, clock: FakeClock
) -> None:
    policy = BreakerPolicy(minimum_calls=2, failure_rate=0.5, open_for=30.0, half_open_permits=1)

    @task("s.brk", breaker=Breaker("svc", policy))
    async def h(p: T) -> None: ...

    failing = pipe(policies, h, Call(ConnectionError("down")))
    for _ in range(2):
        assert isinstance(await failing.run(msg("s.brk"), []), DeadLettered)
    call = Call()
    p = pipe(policies, h, call)
    out = await p.run(msg("s.brk"), [])
    assert isinstance(out, Deferred) and out.reason == "breaker_open" and out.metric == "deferred_breaker"
    assert 0 < out.delay <= 30.0 and call.calls == 0
    clock.advance(30.0)
    assert await p.run(msg("s.brk"), []) is ACK, "the half-open trial runs and closes it"


async def test_a_retry_is_timed_on_the_clock(policies: Policies, clock: FakeClock) -> None:
    @task("s.retry", retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(3.0)))
    async def h(p: T) -> None: ...

    clock.advance(7)
    out = await pipe(policies, h, Call(KeyError("k"))).run(msg("s.retry"), [])
    assert out == Retry(3.0, 2, int(START * 1000) + 7000)
    assert out.metric == "retried"
    last = RetryOrDeadLetter(clock=clock).on_error(h, msg("s.retry", attempt=2), KeyError("k"))
    assert (
        isinstance(last, DeadLettered)
        and last.headers["x-sluice-last-failure-at"] == int(START * 1000) + 7000
    )


async def test_every_outcome_leaves_the_pipeline_as_its_type_says(policies: Policies) -> None:
    @task("s.any")
    async def h(p: T) -> None: ...

    outs: list[Outcome] = [
        await pipe(policies, h, Call()).run(msg("s.any"), []),
        await pipe(policies, h, Call(SystemExit(3))).run(msg("s.any"), []),
    ]
    assert outs[0] is ACK
    assert isinstance(outs[1], DeadLettered) and outs[1].reason == "handler_error" and outs[1].ran
