"""The store on the real Redis: the lease and its fencing token, one claim per occurrence, the record after
the confirm, code sync, pause and resume."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_sync

from sluice.resilience.clock import FakeClock
from sluice.schedules import ScheduleStore, every, row
from sluice.schedules.errors import UnknownSchedule


async def test_the_lease_has_one_holder_and_a_new_token_per_holder(
    store: ScheduleStore, r: redis_sync.Redis
) -> None:
    a = await store.acquire("a", 5)
    b = await store.acquire("b", 5)
    assert a.held and not b.held and b.holder == "a" and b.token == a.token
    again = await store.acquire("a", 5)
    assert again.held and again.token == a.token  # a renewal keeps the token
    r.delete(store.leader_key)  # the lease expired (a stopped leader)
    b2 = await store.acquire("b", 5)
    assert b2.held and b2.token > a.token
    assert not (await store.acquire("a", 5)).held
    assert await store.release(a) is False  # not a's any more
    assert await store.release(b2) is True and await store.leader() is None


async def test_one_claim_per_occurrence_and_a_fenced_leader_claims_nothing(
    store: ScheduleStore, clock: FakeClock, r: redis_sync.Redis
) -> None:
    await store.save(every("1s", name="s1", task="t"))
    a = await store.acquire("a", 5)
    occ = int(clock.time() * 1000) // 1000 * 1000 + 1000
    assert await store.claim(a, "s1", occ) == "claimed"
    assert await store.claim(a, "s1", occ) == "claimed"  # a double run of the script is harmless
    r.delete(store.leader_key)
    b = await store.acquire("b", 5)
    assert await store.claim(a, "s1", occ) == "fenced"  # a woke up after its lease: refused
    assert await store.claim(b, "s1", occ) == "reclaimed"  # a never recorded it: b sends it again
    assert await store.record("s1", occ, f"s1:{occ}", occ + 5)
    assert await store.claim(b, "s1", occ) == "fired"
    assert await store.claim(b, "s1", occ - 1000) == "fired"  # never behind the cursor
    entry = await store.get("s1")
    assert entry.state.cursor == occ and entry.state.last_task == f"s1:{occ}" and entry.state.pending is None
    assert entry.state.fires == 1 and row(entry)["last_lag_ms"] == 5  # confirmed 5 ms after its due time
    assert not await store.record("s1", occ, f"s1:{occ}", occ + 9)  # a second record of it: not counted
    assert (await store.get("s1")).state.fires == 1


async def test_many_concurrent_claimers_one_winner(store: ScheduleStore, r: redis_sync.Redis) -> None:
    await store.save(every("1s", name="s1", task="t"))
    lease = await store.acquire("a", 5)
    others = [await store.acquire(f"x{i}", 5) for i in range(5)]
    replies = await asyncio.gather(*(store.claim(lease_, "s1", 10**13) for lease_ in [lease, *others]))
    assert replies.count("claimed") == 1 and replies.count("fenced") == 5


async def test_pause_refuses_claims_and_resume_counts_from_now(
    store: ScheduleStore, clock: FakeClock
) -> None:
    await store.save(every("1s", name="s1", task="t"))
    lease = await store.acquire("a", 5)
    await store.set_paused("s1", True)
    assert (await store.get("s1")).paused
    assert await store.claim(lease, "s1", 10**13) == "paused"
    clock.advance(60)
    await store.set_paused("s1", False)
    entry = await store.get("s1")
    assert not entry.paused and entry.state.cursor == int(clock.time() * 1000)
    with pytest.raises(UnknownSchedule):
        await store.set_paused("nope", True)


async def test_sync_adds_updates_and_removes_only_what_code_declared(
    store: ScheduleStore, clock: FakeClock
) -> None:
    await store.save(every("1m", name="runtime-one", task="t"), "runtime")
    report = await store.sync([every("5m", name="a", task="t"), every("5m", name="b", task="t")])
    assert sorted(report.added) == ["a", "b"]
    cursor = (await store.get("a")).state.cursor
    clock.advance(600)
    assert (
        await store.sync([every("5m", name="a", task="t"), every("5m", name="b", task="t")]) == type(report)()
    )
    assert (await store.get("a")).state.cursor == cursor  # an unchanged schedule keeps its cursor (catch-up)
    report = await store.sync([every("10m", name="a", task="t")])
    assert report.updated == ("a",) and report.removed == ("b",)
    assert (await store.get("a")).state.cursor == int(clock.time() * 1000)  # new timing: from now
    assert [e.schedule.name for e in await store.entries()] == ["a", "runtime-one"]
