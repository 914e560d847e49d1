"""kill -9 of the Redis Cluster master that holds a limiter's key, mid-run.

A fail-closed GCRA limiter decides on one name whose key lives on the killed master, and on names held
by the other masters. During the fail-over the first name's decisions are refused as degraded (the
outage policy), never an exception; once the replica is promoted (within ``FAILOVER_BOUND``) they are
Redis' decisions again, on the new master. Then ``redis-cluster.sh up`` restarts the killed node, which
rejoins as a replica.

Measured, not asserted: the names on the other masters are refused too while the limiter is in outage
(2.6 s here): a primitive keeps one outage state (``OutageMonitor``), not one per node, so after a failed
call every name waits for the next probe, and the probe is whichever call comes first.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import RedisCluster

from sluice.resilience import FailClosed, GCRALimiter, KeySpace, Rate
from support.clusters import RedisClusterNodes
from support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAILOVER_BOUND = 30.0  # seconds from the kill to Redis deciding again (node timeout 2 s + election)


async def test_kill_the_master_of_a_limit(redis_cluster: RedisClusterNodes, cprefix: str) -> None:
    client = RedisCluster.from_url(redis_cluster.url, socket_timeout=1.0, socket_connect_timeout=0.5)
    await client.initialize()
    limiter = GCRALimiter(
        client,  # type: ignore[arg-type]
        Rate.per_second(10_000),
        burst=10_000,
        keys=KeySpace(cprefix),
        timeout=1.0,
        outage=FailClosed(probe_interval=0.2),
    )
    names = [f"api-{i}" for i in range(12)]
    home = {n: client.get_node_from_key(limiter.key(n)).port for n in names}  # type: ignore[union-attr]
    victim = names[0]
    killed_port = home[victim]
    others = [n for n in names if home[n] != killed_port]
    assert (await limiter.try_acquire(victim)).allowed
    try:
        await asyncio.to_thread(redis_cluster.kill, killed_port)
        killed = time.monotonic()
        degraded = 0
        others_decided = 0
        while True:
            d = await limiter.try_acquire(victim)
            if d.allowed and not d.degraded:
                break
            assert not d.allowed and d.degraded  # refused by the outage policy, not by the limit
            degraded += 1
            o = await limiter.try_acquire(others[degraded % len(others)])
            others_decided += o.allowed and not o.degraded
            assert time.monotonic() - killed < FAILOVER_BOUND, "no promotion within the bound"
            await asyncio.sleep(0.1)
        recovered = time.monotonic() - killed
        new_home = client.get_node_from_key(limiter.key(victim)).port  # type: ignore[union-attr]
        print(
            f"master {killed_port} killed: {degraded} degraded refusals, decided by Redis again after "
            f"{recovered:.1f}s on {new_home}; names on other masters decided by Redis {others_decided} times"
        )
        assert new_home != killed_port
        # others_decided is 0 or near it: the outage state is the limiter's, not one node's (see the docstring)
        assert all([(await limiter.try_acquire(n)).allowed for n in names])
    finally:
        await limiter.aclose()
        await client.aclose()
        await asyncio.to_thread(redis_cluster.up)  # the killed node back, as a replica
    await eventually(
        lambda: (
            f"127.0.0.1:{killed_port} running" in redis_cluster.status()
            and "role=slave" in _line(redis_cluster.status(), killed_port)
        ),
        within=60,
        what="the killed node back as a replica",
        every=0.5,
    )


def _line(status: str, port: int) -> str:
    return next((line for line in status.splitlines() if line.startswith(f"127.0.0.1:{port} ")), "")
