"""The fire loop on a FakeClock, publishing to the real RabbitMQ with the real Redis: catch-up skip/latest/all
after no scheduler ran for 10 occurrences, a leader that woke up past its lease, the headers of a fire."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis as redis_sync

from sluice.resilience.clock import FakeClock
from sluice.schedules import ScheduleStore, every
from sluice.settings import Settings
from sluice_scheduler import LazyPublisher, Scheduler
from support.workers import worker_env

from .conftest import drain
from .procs import sluice


def _scheduler(store: ScheduleStore, publisher: LazyPublisher, clock: FakeClock, name: str) -> Scheduler:
    return Scheduler(
        store, publisher, instance=name, lease=5.0, clock=clock, task_queues={"demo.noop": "default"}
    )


async def _pass(s: Scheduler) -> float:
    await s.leadership.tick()
    lease = s.leadership.held()
    assert lease is not None
    return await s.loop.fire_pass(lease)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("skip", [11]), ("latest", [10, 11]), ("all", list(range(1, 12)))],
)
async def test_catch_up_after_ten_missed_occurrences(
    store: ScheduleStore,
    clock: FakeClock,
    settings: Settings,
    amqp_url: str,
    policy: str,
    expected: list[int],
) -> None:
    """Occurrences 1..10 s fall while no scheduler runs; one starts at 11.2 s: 11 s is on time (within the
    1 s grace), 1..10 are caught up per the policy."""
    t0 = int(clock.time() * 1000)
    await store.save(every("1s", name="tick", task="demo.noop", catch_up=policy, payload={"n": 1}))
    clock.advance(11.2)
    publisher = LazyPublisher(settings)
    try:
        s = _scheduler(store, publisher, clock, "a")
        wait = await _pass(s)
        assert 0 < wait <= 0.8  # the next occurrence (t0 + 12 s) is 0.8 s away
        fired = drain(amqp_url, f"{settings.prefix}.q.default")
        assert [(f.occurrence - t0) // 1000 for f in fired] == expected
        assert [f.id for f in fired] == [f"tick:{f.occurrence}" for f in fired]
        clock.advance(0.8)
        await _pass(s)
        after = drain(amqp_url, f"{settings.prefix}.q.default")
        assert [(f.occurrence - t0) // 1000 for f in after] == [12]  # then on time, whatever the policy
        entry = await store.get("tick")
        assert entry.state.cursor == t0 + 12_000 and entry.state.last_task == f"tick:{t0 + 12_000}"
        skipped = s.metrics.skipped.labels("tick")._value.get()
        assert skipped == {"skip": 10, "latest": 9, "all": 0}[policy]
        # the same counts, fleet-wide in Redis, as `sluice schedule ls --json` shows them
        ls_env = worker_env(amqp_url, settings.redis_url, settings.prefix)
        ls = await asyncio.to_thread(sluice, ls_env, "schedule", "ls", "--json")
        assert ls.returncode == 0, ls.stderr
        (got,) = json.loads(ls.stdout)
        caught_up = {"skip": 0, "latest": 1, "all": 10}[policy]
        assert (got["fires"], got["caught_up"], got["skipped"]) == (len(expected) + 1, caught_up, skipped)
        table = await asyncio.to_thread(sluice, ls_env, "schedule", "ls")
        assert table.returncode == 0, table.stderr
        (line,) = [ln for ln in table.stdout.splitlines() if "tick:" in ln]
        cells = [c.strip() for c in line.split("│")[8:11]]
        assert cells == [str(len(expected) + 1), str(caught_up), str(int(skipped))], line
    finally:
        await publisher.aclose()


async def test_a_fire_carries_the_headers_payload_and_queue(
    store: ScheduleStore, clock: FakeClock, settings: Settings, amqp_url: str
) -> None:
    await store.save(every("1s", name="hdr", task="demo.noop", payload={"hello": "world"}))
    clock.advance(1.0)
    publisher = LazyPublisher(settings)
    try:
        await _pass(_scheduler(store, publisher, clock, "a"))
    finally:
        await publisher.aclose()
    (f,) = drain(amqp_url, f"{settings.prefix}.q.default")
    assert f.schedule == "hdr" and f.task == "demo.noop" and json.loads(f.body) == {"hello": "world"}
    assert f.headers["x-sluice-idempotency-key"] == f.id == f"hdr:{f.occurrence}"
    assert f.occurrence % 1000 == 0 and f.headers["x-sluice-queue"] == "default"


async def test_two_leaders_that_both_believe_it_fire_each_occurrence_once(
    store: ScheduleStore, clock: FakeClock, settings: Settings, amqp_url: str, r: redis_sync.Redis
) -> None:
    """a leads; its lease is gone (a paused process) and b takes over; a wakes up still thinking it leads
    (its local validity not yet passed on this clock): Redis fences every claim of a."""
    await store.save(every("1s", name="both", task="demo.noop", catch_up="all"))
    publisher = LazyPublisher(settings)
    try:
        a = _scheduler(store, publisher, clock, "a")
        b = _scheduler(store, publisher, clock, "b")
        clock.advance(1.0)
        await _pass(a)
        stale = a.leadership.held()
        assert stale is not None
        r.delete(store.leader_key)  # a's lease expired while it was stopped
        clock.advance(2.0)
        await _pass(b)
        clock.advance(1.0)
        await a.loop.fire_pass(stale)  # a believes it leads
        assert a.leadership.held() is None  # fenced: it gave up at once
        await _pass(b)
        occurrences = [f.occurrence for f in drain(amqp_url, f"{settings.prefix}.q.default")]
        assert len(occurrences) == len(set(occurrences)) == 4
        assert occurrences == sorted(occurrences) and occurrences[-1] - occurrences[0] == 3000
    finally:
        await publisher.aclose()


async def test_a_paused_schedule_does_not_fire_and_resumes_from_now(
    store: ScheduleStore, clock: FakeClock, settings: Settings, amqp_url: str
) -> None:
    await store.save(every("1s", name="p", task="demo.noop", catch_up="all"))
    await store.set_paused("p", True)
    publisher = LazyPublisher(settings)
    try:
        s = _scheduler(store, publisher, clock, "a")
        clock.advance(5.0)
        await _pass(s)
        assert drain(amqp_url, f"{settings.prefix}.q.default") == []
        await store.set_paused("p", False)
        clock.advance(1.0)
        await _pass(s)
        assert len(drain(amqp_url, f"{settings.prefix}.q.default")) == 1
    finally:
        await publisher.aclose()


async def test_a_schedule_whose_queue_does_not_exist_does_not_hold_up_the_others(
    store: ScheduleStore, clock: FakeClock, settings: Settings, amqp_url: str
) -> None:
    """The scheduler may create only the configured queues (a schedule added at run time cannot make the
    broker create one): a fire to a missing queue is refused, retried each pass, and the rest fire."""
    from sluice.publisher import creatable_queues

    await store.save(every("1s", name="a-lost", task="demo.noop", queue="nowhere"))
    await store.save(every("1s", name="b-fine", task="demo.noop"))
    clock.advance(1.0)
    publisher = LazyPublisher(settings, creatable_queues(settings))
    try:
        s = _scheduler(store, publisher, clock, "a")
        await _pass(s)
        await _pass(s)
    finally:
        await publisher.aclose()
    (fired,) = drain(amqp_url, f"{settings.prefix}.q.default")
    assert fired.schedule == "b-fine"
    lost = await store.get("a-lost")
    assert lost.state.last_task is None and lost.state.pending is not None  # claimed, never recorded
    assert s.metrics.publish_failures._value.get() == 2
