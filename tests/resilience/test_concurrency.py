"""The distributed semaphore: limits, fencing tokens, heartbeats, and a holder killed with -9.

The core cases run on the real Redis and on the in-memory backend (on a FakeClock: no real-time wait).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sluice.resilience import ConcurrencyLimited, ConcurrencyLimiter, KeySpace, LeaseLost

from .conftest import Store

HAMMER = Path(__file__).with_name("hammer.py")


async def test_many_tasks_never_exceed_the_limit(store: Store) -> None:
    sem = ConcurrencyLimiter(store.client, 3, lease=5.0, poll=0.002, keys=store.keys)
    inside, most, done = 0, 0, 0

    async def worker() -> None:
        nonlocal inside, most, done
        async with sem.acquire("db"):
            inside += 1
            most = max(most, inside)
            await store.sleep(0.005)
            inside -= 1
        done += 1

    await store.drive(asyncio.gather(*(worker() for _ in range(30))))
    assert done == 30
    assert most == 3
    assert await store.zcard(sem.keys_of("db")[0]) == 0  # all released


async def test_fencing_tokens_grow_and_keys_expire(store: Store) -> None:
    sem = ConcurrencyLimiter(store.client, 2, lease=2.0, keys=store.keys)
    tokens = []
    for _ in range(5):
        lease, _ = await sem.try_acquire("db")
        assert lease is not None
        tokens.append(lease.token)
        await sem.release(lease)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 5
    leases, fence = sem.keys_of("db")
    assert b"{db}" in leases.encode()
    assert 0 < await store.pttl(fence) <= 3_000
    await store.delete(leases, fence)  # even with every key gone, the next token is larger
    await store.elapse(0.001)  # (tokens are never below the server clock in µs, and it moved on)
    lease, _ = await sem.try_acquire("db")
    assert lease is not None
    assert lease.token > tokens[-1]
    assert 0 < await store.pttl(leases) <= 3_000


async def test_full_semaphore_answers_when_the_oldest_lease_ends(store: Store) -> None:
    sem = ConcurrencyLimiter(store.client, 1, lease=10.0, keys=store.keys)
    first, _ = await sem.try_acquire("db")
    assert first is not None
    second, retry = await sem.try_acquire("db")
    assert second is None
    assert 9.0 < retry <= 10.0

    async def hold() -> None:
        async with sem.acquire("db", max_wait=0.05):
            pass

    with pytest.raises(ConcurrencyLimited):
        await store.drive(hold())


async def test_heartbeat_keeps_a_lease_past_its_lease_time(store: Store) -> None:
    sem = ConcurrencyLimiter(store.client, 1, lease=0.3, heartbeat=0.05, keys=store.keys)
    other = ConcurrencyLimiter(store.client, 1, lease=0.3, keys=store.keys)
    async with sem.acquire("db") as lease:
        renewed = 0
        while renewed < 12:  # 12 heartbeats: twice the lease time
            await store.elapse(0.05)
            if store.clock is not None:  # let the woken heartbeat's renewal run first
                await store.clock.until_sleeping()
            renewed += 1
            assert (await other.try_acquire("db"))[0] is None
        assert not lease.lost.is_set()
    assert (await other.try_acquire("db"))[0] is not None


async def test_renewing_an_expired_lease_reports_it_lost(store: Store) -> None:
    sem = ConcurrencyLimiter(store.client, 1, lease=1.0, keys=store.keys)
    lease, _ = await sem.try_acquire("db")
    assert lease is not None
    # as if it had expired and been reclaimed
    await sem._runner.command("ZREM", sem.keys_of("db")[0], lease.token)
    lease.check()  # still believed held
    assert not await sem.renew(lease)
    assert lease.lost.is_set()
    with pytest.raises(LeaseLost):
        lease.check()


@pytest.mark.slow
async def test_slot_of_a_killed_holder_returns_within_the_lease(
    redis_url: str, redis: Redis, keys: KeySpace
) -> None:
    lease_time = 1.0
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HAMMER),
        "hold",
        redis_url,
        keys.prefix,
        "1",
        str(lease_time),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), timeout=20)
        held_token = json.loads(line)["token"]
        sem = ConcurrencyLimiter(redis, 1, lease=lease_time, poll=0.01, keys=keys)
        assert (await sem.try_acquire("hot"))[0] is None
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        killed_at = time.monotonic()
        async with sem.acquire("hot", max_wait=5.0) as lease:
            waited = time.monotonic() - killed_at
            assert lease.token > held_token
        assert waited <= lease_time + 0.2
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
