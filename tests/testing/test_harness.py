"""sluice.testing's TestWorker: the real runner and pipeline on an in-memory broker and a fake clock.

Every test here runs in simulated time: a backoff of 30 s or an open breaker costs no real wait.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import Breaker, RateLimit
from sluice.protocol import H_ATTEMPT, H_DEAD_QUEUE, H_DEAD_REASON, H_ETA, H_TASK
from sluice.resilience import BreakerPolicy, BreakerState, CircuitBreaker, FixedBackoff, KeySpace, RetryPolicy
from sluice.testing import FakeClock, MemoryBackend, StillBusy, TestWorker
from sluice_worker.outcome import Deferred, Retry, Skipped

START = 1_700_000_000.0


class N(BaseModel):
    n: int = 0


class Boom(Exception):
    pass


@task("h.always_fails", retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(30)))
async def always_fails(p: N) -> None:
    raise Boom(f"no {p.n}")


@task("h.plain")
async def plain(p: N) -> None:
    pass


async def first_record(w: TestWorker, within: float = 10.0) -> None:
    """Until ``w`` recorded a delivery (bounded): while a handler is held, a join runs in the background."""
    async with asyncio.timeout(within):
        while not w.deliveries:
            await asyncio.sleep(0)


async def test_join_on_an_empty_harness_returns_at_once() -> None:
    async with TestWorker([plain]) as w:
        await w.join()
        assert w.deliveries == [] and w.dead_letters == [] and w.elapsed == 0


async def test_a_retry_comes_back_after_its_backoff_with_the_next_attempt() -> None:
    clock = FakeClock(START)
    async with TestWorker([always_fails], clock=clock) as w:
        task_id = w.enqueue("h.always_fails", {"n": 1})
        await w.join()

        h = w.history(task_id)
        assert h.kinds == ["retried", "retried", "dead_lettered"]
        assert h.retries == [Retry(30, 2, int(START * 1000)), Retry(30, 3, int(START * 1000))]
        assert [d.at for d in h.decisions] == [0, 30, 60]  # each retry ran when its backoff ended
        assert [d.attempt for d in h.decisions] == [1, 2, 3]
        assert h.hops == 6  # 30 s is served by the 16, 8, 4 and 2 s tiers: three hops after the first
        copy = h.deliveries[1]  # the first copy: the worker's own headers (delays.republish)
        assert copy.headers[H_ATTEMPT] == 2 and copy.headers[H_ETA] == int(START * 1000) + 30_000
        assert h.runs == 3 and w.elapsed == 60

        dead = h.dead_letter
        assert dead is not None and w.dead_letters == [dead]
        assert dead.reason == "handler_error" and dead.error_type == "Boom" and dead.attempt == 3
        assert "no 1" in dead.detail and "attempt 3 of 3" in dead.detail
        assert (
            dead.first_failure_ms == int(START * 1000) and dead.last_failure_ms == int(START * 1000) + 60_000
        )
        assert dead.headers[H_DEAD_QUEUE] == "default" and dead.queue == "default"


async def test_a_rate_limit_defers_what_is_over_it_spread_at_its_interval() -> None:
    @task("h.limited", rate_limit="1/s")
    async def limited(p: N) -> None: ...

    async with TestWorker([limited]) as w:
        ids = [w.enqueue("h.limited", {"n": i}) for i in range(3)]
        await w.join()

        first, second, third = (w.history(i) for i in ids)
        assert first.kinds == ["acked"]
        assert second.outcomes[0] == Deferred("rate_limited", 1.0)
        assert third.outcomes[0] == Deferred("rate_limited", 2.0)  # lined up behind the second
        assert second.acked and third.acked and second.runs == third.runs == 1
        assert w.counts() == {"success": 3, "deferred_limit": 2}
        assert w.elapsed == 2


async def test_a_short_rate_limit_wait_is_waited_in_place_on_the_fake_clock() -> None:
    @task("h.fast", rate_limit=RateLimit(10, 1.0, burst=1))
    async def fast(p: N) -> None: ...

    async with TestWorker([fast]) as w:
        ids = [w.enqueue("h.fast") for _ in range(3)]
        await w.join()
        assert all(w.history(i).kinds == ["acked"] for i in ids)  # no deferral: 0.1 s is waited in place
        assert w.elapsed == pytest.approx(0.2)
        assert [d.at for d in w.deliveries] == [0, 0, pytest.approx(0.1)]


async def test_a_runtime_override_limits_a_task_that_declares_none() -> None:
    async with TestWorker([plain]) as w:
        await w.limits.set("h.plain", RateLimit.parse("1/s"))  # sluice limits set h.plain 1/s
        ids = [w.enqueue("h.plain") for _ in range(2)]
        await w.join()
        assert w.history(ids[1]).kinds == ["deferred", "acked"]
        assert w.history(ids[1]).outcomes[0] == Deferred("rate_limited", 1.0)


async def test_an_open_breaker_defers_then_half_open_lets_a_trial_through() -> None:
    health = {"up": False}
    policy = BreakerPolicy(minimum_calls=2, failure_rate=0.5, open_for=30, half_open_permits=1)

    @task("h.guarded", breaker=Breaker("gw", policy))
    async def guarded(p: N) -> None:
        if not health["up"]:
            raise ConnectionError("gateway down")

    async with TestWorker([guarded]) as w:
        failed = [w.enqueue("h.guarded", {"n": i}) for i in range(2)]
        await w.join()
        assert [w.history(i).kinds for i in failed] == [["dead_lettered"], ["dead_lettered"]]
        breaker = CircuitBreaker(w.backend, "gw", policy, keys=KeySpace(w.settings.prefix))
        assert await breaker.state() is BreakerState.OPEN  # the same state the worker's breaker sees

        health["up"] = True
        later = w.enqueue("h.guarded", {"n": 3})
        await w.join()
        h = w.history(later)
        assert h.kinds == ["deferred", "acked"]
        deferral = h.outcomes[0]
        assert isinstance(deferral, Deferred) and deferral.reason == "breaker_open"
        assert deferral.delay == pytest.approx(30, abs=0.1)
        assert h.decisions[1].at >= 30  # the trial ran once the breaker went half-open
        assert await breaker.state() is BreakerState.CLOSED
        assert w.counts()["deferred_breaker"] == 1


async def test_an_idempotency_key_runs_the_effect_once() -> None:
    runs: list[int] = []

    @task("h.once", idempotency=True)
    async def once(p: N) -> None:
        runs.append(p.n)

    async with TestWorker([once]) as w:
        a = w.enqueue("h.once", {"n": 1}, idempotency_key="order-7")
        b = w.enqueue("h.once", {"n": 2}, idempotency_key="order-7")
        c = w.enqueue("h.once", {"n": 3}, idempotency_key="order-8")
        await w.join()
        assert runs == [1, 3]
        assert w.history(a).kinds == ["acked"] and w.history(c).kinds == ["acked"]
        assert w.history(b).outcomes == [Skipped("duplicate")] and w.history(b).acked
        assert w.counts()["deduplicated"] == 1


async def test_a_bad_payload_an_unknown_task_and_a_foreign_message_are_dead_lettered() -> None:
    async with TestWorker([plain]) as w:
        bad = w.enqueue("h.plain", {"n": "not a number"})
        unknown = w.enqueue("h.nobody", {})
        w.publish_raw(b"{not json", {H_TASK: "h.plain"}, message_id="raw-1")
        w.publish_raw(b"{}", {}, message_id="raw-2")  # no x-sluice-task
        await w.join()

        reasons = {d.id: d.reason for d in w.dead_letters}
        assert reasons == {
            bad: "invalid_payload",
            unknown: "unknown_task",
            "raw-1": "not_json",
            "raw-2": "bad_headers",
        }
        dead = w.history(bad).dead_letter
        assert dead is not None and dead.task == "h.plain" and "not a number" in dead.detail
        assert dead.headers[H_DEAD_REASON] == "invalid_payload"
        assert all(not d.ran for d in w.deliveries)  # no handler ran
        assert w.counts() == {"dead_lettered": 4}


async def test_the_bound_stops_a_task_that_retries_forever() -> None:
    @task("h.forever", retry=RetryPolicy(max_attempts=None, deadline=1e9, backoff=FixedBackoff(1)))
    async def forever(p: N) -> None:
        raise Boom("again")

    async with TestWorker([forever]) as w:
        w.enqueue("h.forever")
        with pytest.raises(StillBusy, match=r"after 50 deliveries.*'h.forever'"):
            await w.join(max_deliveries=50)
        assert len(w.deliveries) == 50 and len(w.pending) == 1
        before = w.elapsed
        with pytest.raises(StillBusy, match="after 100 simulated seconds"):
            await w.join(max_time=100)
        assert 99 <= w.elapsed - before <= 100


async def test_a_sync_handler_runs_in_the_worker_thread_pool() -> None:
    threads: list[str] = []

    @task("h.sync", retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(5)))
    def sync(p: N, ctx: TaskContext) -> None:
        threads.append(threading.current_thread().name)
        if ctx.attempt == 1:
            raise Boom("first try")

    async with TestWorker([sync]) as w:
        h = await w.run("h.sync", {"n": 1})
        assert h.kinds == ["retried", "acked"] and h.retries[0].delay == 5
        assert len(threads) == 2 and all(t.startswith("sluice-test-sync") for t in threads)
        assert threading.current_thread().name not in threads


async def test_a_delayed_task_runs_when_due_and_advance_stops_at_its_time() -> None:
    ran: list[float] = []
    clock = FakeClock(START)

    @task("h.later")
    async def later(p: N) -> None:
        ran.append(clock.time() - START)

    async with TestWorker([later], clock=clock, backend=MemoryBackend(clock=clock)) as w:
        task_id = w.enqueue("h.later", delay=10)
        await w.advance(5)
        assert ran == [] and len(w.pending) == 1
        await w.advance(10)
        assert ran == [pytest.approx(10, abs=0.5)]  # delays are kept to +-0.5 s, as on RabbitMQ
        assert w.history(task_id).kinds == ["acked"] and w.elapsed == 15


def test_the_backend_must_be_on_the_harness_clock() -> None:
    from sluice.errors import ConfigError

    with pytest.raises(ConfigError, match="clock"):
        TestWorker([plain], clock=FakeClock(), backend=MemoryBackend(clock=FakeClock()))


async def test_with_concurrency_a_duplicate_finds_the_claim_in_progress() -> None:
    release = asyncio.Event()
    runs: list[int] = []

    @task("h.slow_once", idempotency=True)
    async def slow_once(p: N) -> None:
        runs.append(p.n)
        await release.wait()

    async with TestWorker([slow_once], concurrency=2) as w:
        first = w.enqueue("h.slow_once", {"n": 1}, idempotency_key="k")
        second = w.enqueue("h.slow_once", {"n": 2}, idempotency_key="k")
        joined = asyncio.create_task(w.join())
        await first_record(w)  # the second delivery ends first (deferred): the first holds the claim
        assert [d.task_id for d in w.deliveries] == [second]
        release.set()
        await joined
        assert runs == [1]
        assert w.history(first).kinds == ["acked"]
        deferral = w.history(second).outcomes[0]
        assert isinstance(deferral, Deferred) and deferral.reason == "in_progress"
        assert deferral.delay == pytest.approx(300, abs=1)  # the claim's lease (Idempotency.lease)
        assert w.history(second).outcomes[-1] == Skipped("duplicate")


async def test_an_object_a_foreign_failure_policy_returns_is_dead_lettered_as_the_session_does() -> None:
    class Odd:
        def on_error(self, task: object, message: object, error: BaseException) -> object:
            return "not an outcome"

    async with TestWorker([always_fails], failures=Odd()) as w:  # type: ignore[arg-type]
        h = await w.run("h.always_fails")
        assert h.kinds == ["dead_lettered"] and h.dead_letter is not None
        assert h.dead_letter.reason == "unsupported_outcome"


async def test_with_concurrency_a_task_over_its_fleet_limit_is_deferred() -> None:
    release = asyncio.Event()
    runs: list[int] = []

    @task("h.single", concurrency=1)
    async def single(p: N) -> None:
        runs.append(p.n)
        if p.n == 1:
            await release.wait()

    async with TestWorker([single], concurrency=2) as w:
        first = w.enqueue("h.single", {"n": 1})
        second = w.enqueue("h.single", {"n": 2})
        joined = asyncio.create_task(w.join())
        await first_record(w)  # the second waits for the slot on the fake clock, then is deferred
        assert [d.task_id for d in w.deliveries] == [second]
        release.set()
        await joined
        assert runs == [1, 2]
        assert w.history(first).kinds == ["acked"]
        assert w.history(second).kinds == ["deferred", "acked"]
        assert w.history(second).outcomes[0] == Deferred("concurrency", 1.0)
        assert w.counts()["deferred_limit"] == 1


def test_every_outcome_of_the_worker_model_has_a_kind() -> None:
    """A new outcome in sluice_worker.outcome (a Cancelled...) must be carried out here too."""
    from sluice.testing._records import _KINDS
    from sluice_worker.outcome import OUTCOME_TYPES

    assert set(_KINDS) == set(OUTCOME_TYPES)
