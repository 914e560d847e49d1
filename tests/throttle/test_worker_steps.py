"""The worker's side of upstream throttling and strict windows, in process against the real Redis: a
task's pipeline (the steps ``sluice worker`` builds) turns a handler's ``Throttled`` into a deferral
that spends nothing, freezes the task's key (or the throttle's scope) fleet-wide, refuses the frozen
key in the limiter's own script, and enforces ``"N/s sliding"`` with the exact sliding log.

(Real worker processes against a fake upstream: tests/throttle/test_fleet_throttle.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import Throttled, task
from sluice.policy import Breaker, RateLimit, RetryBudgetPolicy
from sluice.protocol import TaskMessage
from sluice.resilience import BreakerPolicy, Freezes, GCRALimiter, KeySpace, RetryPolicy, SlidingLogLimiter
from sluice.tasks import Task
from sluice.telemetry import Telemetry
from sluice_worker._resilience_cache import SLIDING_MARGIN
from sluice_worker.outcome import ACK, RATE_LIMITED, THROTTLED, Deferred, Outcome
from sluice_worker.policies import Policies
from sluice_worker.policies.rate_limit import FREEZE_RECHECK, SETTLE_AFTER


class P(BaseModel):
    tenant: str = "a"


class Numbered(BaseModel):
    n: int


class Call:
    """Stands in for the worker's Invoker: answers ``fail`` (None: the handler returned); counts calls."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.calls = 0
        self.takes = 0.0  # seconds each call takes (a slow upstream)

    async def __call__(self, task: Task, args: list[object]) -> BaseException | None:
        self.calls += 1
        if self.takes:
            await asyncio.sleep(self.takes)
        return self.fail


class Worker:
    """One worker's policies (a Redis client of its own) and the pipelines of the tasks it ran."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(redis_url)
        self.telemetry = Telemetry("worker")
        self.policies = Policies(self.client, prefix, telemetry=self.telemetry)
        self.calls: dict[str, Call] = {}
        self._pipelines: dict[str, object] = {}

    async def run(
        self,
        t: Task,
        payload: dict[str, object] | None = None,
        fail: Exception | None = None,
        takes: float = 0.0,
    ) -> Outcome:
        call = self.calls.setdefault(t.name, Call())
        call.takes = takes
        pipeline = self._pipelines.get(t.name)
        if pipeline is None:
            pipeline = self._pipelines[t.name] = self.policies.pipeline(t, self.policies.failures, call)  # type: ignore[arg-type]
        call.fail = fail
        return await pipeline.run(TaskMessage(t.name, payload or {}), [])  # type: ignore[attr-defined,no-any-return]

    async def aclose(self) -> None:
        await self.policies.aclose()
        await self.client.aclose()


@pytest.fixture
async def fleet(redis_url: str, unique: str) -> AsyncIterator[tuple[Worker, Worker, Freezes]]:
    a, b = Worker(redis_url, unique), Worker(redis_url, unique)
    yield a, b, Freezes(a.client, keys=KeySpace(unique))
    keys = [k async for k in a.client.scan_iter(f"{unique}*", count=1000)]
    if keys:
        await a.client.delete(*keys)
    await a.aclose()
    await b.aclose()


async def test_a_throttled_handler_freezes_its_key_for_every_worker(
    fleet: tuple[Worker, Worker, Freezes],
) -> None:
    a, b, freezes = fleet

    @task("t.api", rate_limit="100/s", retry=RetryPolicy(max_attempts=2), retry_budget=RetryBudgetPolicy())
    async def api(p: P) -> None: ...

    out = await a.run(api, fail=Throttled(retry_after=30, status=429))
    assert isinstance(out, Deferred) and out.reason == THROTTLED, out
    # deferred, not a Retry (no attempt spent): for the freeze's time, at most FREEZE_RECHECK (then decided again)
    assert out.delay == pytest.approx(FREEZE_RECHECK, abs=0.1), out
    frozen = await freezes.get("t.api")
    assert frozen is not None and 29 <= frozen.remaining <= 30 and frozen.reason == "t.api: HTTP 429"
    assert a.telemetry.snapshot()["throttles"] == {"t.api": 1}

    # the other worker never saw a 429: its decision reads the freeze in the limiter's script
    out = await b.run(api)
    assert isinstance(out, Deferred) and out.reason == THROTTLED, out
    assert out.delay == pytest.approx(FREEZE_RECHECK, abs=0.1), out
    assert b.calls["t.api"].calls == 0, "a frozen key's task does not run"
    assert await freezes.thaw("t.api")
    assert await b.run(api) is ACK
    assert b.calls["t.api"].calls == 1


async def test_a_scope_is_frozen_and_the_key_that_named_it_is_decided_against_it(
    fleet: tuple[Worker, Worker, Freezes],
) -> None:
    a, _, freezes = fleet

    @task("t.host", rate_limit=RateLimit(100, 1.0, key="tenant"))
    async def host(p: P) -> None: ...

    out = await a.run(host, {"tenant": "acme"}, fail=Throttled(retry_after=20, scope="api.example.com"))
    assert isinstance(out, Deferred) and out.reason == THROTTLED
    assert await freezes.get("t.host:acme") is None, "the scope is frozen, not the key"
    assert (await freezes.get("api.example.com")) is not None
    out = await a.run(host, {"tenant": "acme"})
    assert isinstance(out, Deferred) and out.reason == THROTTLED, "the key now follows its scope"
    assert await a.run(host, {"tenant": "other"}) is ACK, "another tenant's key named no scope"
    await freezes.thaw("api.example.com")
    assert await a.run(host, {"tenant": "acme"}) is ACK


async def test_a_task_without_a_limit_is_deferred_while_its_freeze_holds(
    fleet: tuple[Worker, Worker, Freezes],
) -> None:
    a, _, freezes = fleet

    @task("t.free")
    async def free(p: P) -> None: ...

    out = await a.run(free, fail=Throttled(retry_after=15))
    assert isinstance(out, Deferred) and out.reason == THROTTLED and 14 <= out.delay <= 15.1
    out = await a.run(free)
    assert isinstance(out, Deferred) and out.reason == THROTTLED, "this worker reads the freeze it set"
    assert a.calls["t.free"].calls == 1
    await freezes.thaw("t.free")
    assert await a.run(free) is ACK
    assert await a.run(free) is ACK and a.calls["t.free"].calls == 3


@pytest.mark.parametrize("retry_after", [0.0, 3600.0])
async def test_a_past_or_capped_retry_after_defers_within_bounds(
    fleet: tuple[Worker, Worker, Freezes], retry_after: float
) -> None:
    a, _, freezes = fleet

    @task("t.bounds", rate_limit="10/s")
    async def bounds(p: P) -> None: ...

    out = await a.run(bounds, fail=Throttled(retry_after=retry_after * 24))  # 0, or a day: capped to 1 h
    assert isinstance(out, Deferred) and out.reason == THROTTLED
    assert out.delay == (pytest.approx(FREEZE_RECHECK, abs=0.1) if retry_after else pytest.approx(0, abs=0.1))
    got = await freezes.get("t.bounds")
    assert (got is None) == (retry_after == 0.0)
    assert got is None or 3599 <= got.remaining <= 3600, got


async def test_a_sliding_limit_admits_exactly_its_limit_in_the_window(
    fleet: tuple[Worker, Worker, Freezes],
) -> None:
    a, b, _ = fleet

    @task("t.strict", rate_limit="5/min sliding")
    async def strict(p: P) -> None: ...

    @task("t.smooth", rate_limit="5/min")
    async def smooth(p: P) -> None: ...

    outs = [await (a if i % 2 else b).run(strict) for i in range(8)]
    assert outs[:5] == [ACK] * 5
    assert all(isinstance(o, Deferred) and o.reason == RATE_LIMITED for o in outs[5:]), outs
    # until the oldest admission leaves the window (60.05 s: the worker's margin), lined up 12 s apart
    assert all(isinstance(o, Deferred) and 59.9 <= o.delay <= 72.2 for o in outs[5:]), outs
    shapes = a.policies.cache.limiters
    assert isinstance(shapes[("sliding", 5, 60.0, 5)], SlidingLogLimiter)
    await a.run(smooth)
    assert isinstance(shapes[("gcra", 5, 60.0, 5)], GCRALimiter), "the cache keys on the window"


async def test_a_slow_calls_sliding_unit_counts_from_the_calls_end(
    fleet: tuple[Worker, Worker, Freezes],
) -> None:
    """A call that ends later than SETTLE_AFTER after its admission may have reached the upstream that
    late: its unit is stamped again at the call's end (less the margin, which the window adds back), so
    the next admission waits a full period from then; a fast call's unit keeps its admission stamp."""
    a, _, _ = fleet

    @task("t.slowcall", rate_limit="2/s sliding")
    async def slowcall(p: P) -> None: ...

    assert await a.run(slowcall, takes=SETTLE_AFTER + 0.25) == ACK
    assert await a.run(slowcall) == ACK
    limiter = a.policies.cache.limiters[("sliding", 2, 1.0, 2)]
    log = await a.client.zrange(limiter.key("t.slowcall"), 0, -1, withscores=True)
    slow, fast = sorted(log, key=lambda m: m[0].count(b":s"), reverse=True)
    assert b":s" in slow[0] and b":s" not in fast[0], log  # the slow one was stamped again, once
    first_stamp = int(slow[0].split(b":s")[1].split(b":")[0])
    # stamped at its end (>= 0.25 s + SETTLE_AFTER after admission) less the margin
    assert slow[1] - first_stamp >= (SETTLE_AFTER + 0.25 - SLIDING_MARGIN) * 1e6, log
    out = await a.run(slowcall)
    # the window is full; the first to leave it is the fast unit (its admission), not the slow one
    assert isinstance(out, Deferred) and out.reason == RATE_LIMITED, out


async def test_the_test_harness_honours_a_throttle_in_simulated_time() -> None:
    """``sluice.testing.TestWorker`` runs the same pipeline on its in-memory backend: the freeze holds the
    task's other deliveries until the upstream's time, and nothing is retried or dead-lettered."""
    from sluice.testing import TestWorker

    calls: list[int] = []

    @task("t.sim", rate_limit="10/s")
    async def sim(p: Numbered) -> None:
        calls.append(p.n)
        if len(calls) == 1:
            raise Throttled(retry_after=5)

    async with TestWorker([sim]) as w:
        for i in range(3):
            w.enqueue("t.sim", {"n": i})
        await w.join()
        assert calls == [0, 0, 1, 2] and w.elapsed == pytest.approx(5.0, abs=0.5)
        assert w.counts()["success"] == 3 and not w.dead_letters and w.counts()["retried"] == 0


async def test_a_throttle_is_not_a_failure_to_the_breaker(fleet: tuple[Worker, Worker, Freezes]) -> None:
    """The upstream answered (it asked us to slow down): a breaker on the task records nothing, so a burst
    of 429s freezes the key but never opens the breaker."""
    a, _, freezes = fleet
    policy = BreakerPolicy(failure_rate=0.5, minimum_calls=2, window=10.0)

    @task("t.brk", rate_limit="100/s", breaker=Breaker("t-brk", policy))
    async def brk(p: P) -> None: ...

    for _ in range(4):
        out = await a.run(brk, fail=Throttled(retry_after=30, status=429))
        assert isinstance(out, Deferred) and out.reason == THROTTLED, out
        assert await freezes.thaw("t.brk")
    assert await a.run(brk) is ACK  # closed: an open breaker would defer it (breaker_open)
    assert a.calls["t.brk"].calls == 5
