"""Every sluice Redis script on a real Redis Cluster (3 masters, 3 replicas on 127.0.0.1:7001-7006).

A script whose keys are not all in one slot fails in the client before it is sent
(``RedisClusterException: EVALSHA - all keys must map to the same key slot``) or on the server
(``CROSSSLOT``): either fails these tests. Each primitive's core case runs here through the client sluice
builds from its settings (``sluice.redis_client`` with ``SLUICE_REDIS_CLUSTER=true``), on names chosen to
land on different masters, so the scripts also meet MOVED and a fresh node's NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import RedisClusterException

from sluice.handles import CancelReport, ErrorInfo, QueuedInfo, State, TaskHandles, Tracker
from sluice.redis_client import is_cluster, redis_client
from sluice.resilience import (
    AdaptiveRate,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Claimed,
    ConcurrencyLimiter,
    Done,
    Freezes,
    GCRALimiter,
    IdempotencyStore,
    InProgress,
    KeySpace,
    Rate,
    RetryBudget,
    SlidingLogLimiter,
    SlidingWindowLimiter,
)
from sluice.settings import Settings
from support.clusters import RedisClusterNodes
from support.waiting import eventually

# the first test to ask for a cluster boots it (about 30 s for RabbitMQ idle; more on a loaded machine)
pytestmark = pytest.mark.timeout(600)

NAMES = [f"api-{i}" for i in range(12)]  # spread over the three masters' slots


def masters_of(rc: RedisCluster, keys: list[str]) -> set[str]:
    return {rc.get_node_from_key(k).name for k in keys}


async def test_the_factory_builds_a_cluster_client(redis_cluster: RedisClusterNodes) -> None:
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True)
    client = redis_client(settings, socket_timeout=2.0, socket_connect_timeout=1.0, max_connections=32)
    try:
        assert is_cluster(client)
        assert await client.ping()
        nodes = {n.name for n in client.get_primaries()}  # type: ignore[union-attr]
        assert nodes <= {f"127.0.0.1:{p}" for p in redis_cluster.ports} and len(nodes) == 3
    finally:
        await client.aclose()
    plain = redis_client(Settings(redis_url=redis_cluster.url), socket_timeout=2.0)
    assert not is_cluster(plain)
    await plain.aclose()


async def test_limiters_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    keys = KeySpace(cprefix)
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=3, keys=keys)  # type: ignore[arg-type]
    window = SlidingWindowLimiter(rc, Rate.per_minute(3), keys=keys)  # type: ignore[arg-type]
    sliding = SlidingLogLimiter(rc, Rate.per_minute(3), keys=keys)  # type: ignore[arg-type]
    assert len(masters_of(rc, [gcra.key(n) for n in NAMES])) == 3
    for limiter in (gcra, window, sliding):
        for name in NAMES:
            got = [(await limiter.try_acquire(name)).allowed for _ in range(4)]
            assert got == [True, True, True, False], (type(limiter).__name__, name, got)
            assert not (await limiter.peek(name)).allowed
            await limiter.reset(name)
            first = await limiter.try_acquire(name)
            assert first.allowed
            if limiter is sliding:  # the settle script, on each master
                assert await sliding.settle(name, first.server_time_us) is True
                assert await sliding.settle(name, 1) is False, "a unit long gone is counted afresh"
                assert [(await sliding.try_acquire(name)).allowed for _ in range(2)] == [True, False]
        await limiter.aclose()


async def test_freezes_read_by_the_limiters_in_the_same_slot(rc: RedisCluster, cprefix: str) -> None:
    keys = KeySpace(cprefix)
    freezes = Freezes(rc, keys=keys)  # type: ignore[arg-type]
    gcra = GCRALimiter(rc, Rate.per_second(100), burst=10, keys=keys)  # type: ignore[arg-type]
    sliding = SlidingLogLimiter(rc, Rate.per_second(100), keys=keys)  # type: ignore[arg-type]
    for name in NAMES[:4]:
        assert await freezes.freeze(name, 30.0, reason="429") is not None
        for limiter in (gcra, sliding):
            d = await limiter.try_acquire(name, freeze=name)  # the freeze key shares {name}: one slot
            assert d.frozen and not d.allowed and d.retry_after > 25
        assert (await freezes.get(name)) is not None
        assert await freezes.thaw(name)
        assert (await gcra.try_acquire(name, freeze=name)).allowed
    await gcra.aclose()
    await sliding.aclose()


async def test_a_freeze_of_another_name_is_cross_slot(rc: RedisCluster, cprefix: str) -> None:
    """The rule the docs state: on a cluster a limiter reads only a freeze that shares its hash tag."""
    keys = KeySpace(cprefix)
    gcra = GCRALimiter(rc, Rate.per_second(100), burst=10, keys=keys)  # type: ignore[arg-type]
    a, b = next((x, y) for x in NAMES for y in NAMES if rc.keyslot(gcra.key(x)) != rc.keyslot(gcra.key(y)))
    with pytest.raises(RedisClusterException, match="same key slot"):
        await gcra.try_acquire(a, freeze=b)
    await gcra.aclose()


async def test_concurrency_limiter_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    sem = ConcurrencyLimiter(rc, 2, lease=5.0, keys=KeySpace(cprefix))  # type: ignore[arg-type]
    for name in NAMES[:6]:
        first, _ = await sem.try_acquire(name)
        second, _ = await sem.try_acquire(name)
        third, wait = await sem.try_acquire(name)
        assert first is not None and second is not None and third is None and 0 < wait <= 5
        assert await sem.renew(first)
        await sem.release(first)
        again, _ = await sem.try_acquire(name)
        assert again is not None
        async with sem.acquire(NAMES[-1], max_wait=2.0):
            pass


async def test_breaker_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    policy = BreakerPolicy(minimum_calls=4, failure_rate=0.5, open_for=30.0)
    for name in NAMES[:4]:
        breaker = CircuitBreaker(rc, name, policy, keys=KeySpace(cprefix), open_cache=0.0)  # type: ignore[arg-type]
        for _ in range(4):
            permit = await breaker.allow()
            await breaker.record(permit, success=False)
        assert await breaker.state() is BreakerState.OPEN
        await breaker.reset()
        assert await breaker.state() is BreakerState.CLOSED


async def test_budget_and_idempotency_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    keys = KeySpace(cprefix)
    for name in NAMES[:4]:
        budget = RetryBudget(rc, name, ratio=0.1, min_per_second=0.0001, keys=keys)  # type: ignore[arg-type]
        await budget.record_call(100)
        allowed = [await budget.try_retry() for _ in range(15)]
        assert 8 <= sum(allowed) <= 11 and not allowed[-1], allowed
    store = IdempotencyStore(rc, lease=5.0, keys=keys)  # type: ignore[arg-type]
    for name in NAMES[:6]:
        claim = await store.claim(name)
        assert isinstance(claim, Claimed)
        assert isinstance(await store.claim(name), InProgress)
        await store.renew(name, claim.token)
        await store.complete(name, claim.token, b"result")
        assert await store.claim(name) == Done(b"result")
        other = await store.claim(name + "-released")
        assert isinstance(other, Claimed)
        await store.release(name + "-released", other.token)
        assert isinstance(await store.claim(name + "-released"), Claimed)
    await store.aclose()


async def test_adaptive_rate_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    aimd = AdaptiveRate(rc, Rate.per_second(100), keys=KeySpace(cprefix), cooldown=0.0)  # type: ignore[arg-type]
    for name in NAMES[:4]:
        assert (await aimd.current(name)).per_second == 100
        cut = await aimd.throttled(name)
        assert cut.per_second == 50 and cut.reduced
        await aimd.reset(name)
        assert (await aimd.current(name)).per_second == 100
    await aimd.aclose()


async def test_task_handles_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    """The handles' single script calls: status reads (a MULTI on one task's slot), replay, unique keys,
    cancel rules, and a wait (its subscription to the ended channel) that times out."""
    ids = [uuid.uuid4().hex for _ in range(4)]
    async with TaskHandles(rc, cprefix, fallback=1.0) as handles:  # type: ignore[arg-type]
        first = ids[0]
        assert (await handles.status(first)).state is State.UNKNOWN
        assert (await handles.wait(first, timeout=0.5)).state is State.UNKNOWN
        await handles.cancel_batch("demo.add", 1_800_000_000_000)
        assert await handles.replayed(first) == 1
        replayed = await handles.status(first)
        assert replayed.state is State.QUEUED and replayed.generation == 1
        assert await handles.claim_unique("nightly", ids[1], 30.0) is None
        assert await handles.claim_unique("nightly", ids[2], 30.0) == ids[1]
        await handles.release_unique("nightly", ids[1])
        assert await handles.claim_unique("nightly", ids[2], 30.0) is None


async def test_task_handles_batches_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    """mark_queued, cancel and every Tracker write go through run_many (the pipeline path). The Tracker
    would fail open on an error (its writes counted failed and lost, but for a warning): none here."""
    ids = [uuid.uuid4().hex for _ in range(4)]
    async with (
        TaskHandles(rc, cprefix, fallback=1.0) as handles,  # type: ignore[arg-type]
        Tracker(rc, cprefix, worker="clusterhost:1") as tracker,  # type: ignore[arg-type]
    ):
        await handles.mark_queued([QueuedInfo(i, "demo.add", "default", 1_700_000_000_000) for i in ids])
        assert {(await handles.status(i)).state for i in ids} == {State.QUEUED}
        reports = await handles.cancel(*ids[1:])
        assert reports == [CancelReport(i, State.QUEUED, State.CANCELLED) for i in ids[1:]]
        first = ids[0]
        tracker.running(first, task="demo.add", queue="default", attempt=1)
        await eventually(lambda: _in(handles, first, State.RUNNING), within=10, what="the running write")
        tracker.retrying(first, attempt=1, error=ErrorInfo("ValueError", "boom"), next_run_ms=1)
        await eventually(lambda: _in(handles, first, State.RETRYING), within=10, what="the retrying write")
        waiting = asyncio.ensure_future(handles.wait(first, timeout=20))
        await tracker.ended(first, state=State.SUCCEEDED, attempt=2, result_json=b'{"sum": 3}')
        done = await asyncio.wait_for(waiting, 25)
        assert done.state is State.SUCCEEDED and done.result == {"sum": 3}
        assert tracker.stats.failed == 0 and tracker.stats.dropped == 0


async def _in(handles: TaskHandles, task_id: str, state: State) -> bool:
    return (await handles.status(task_id)).state is state


# The batch path (ScriptRunner._pipeline) once broke on a cluster in two ways: pipe.evalsha(), which
# redis-py's ClusterPipeline refuses (RedisClusterException), and commands queued before `async with pipe`,
# which a ClusterPipeline drops on entering (execute answered []). These three tests failed then.


async def test_coalesced_limiter_batches_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    """Concurrent calls of a coalescing limiter go out as batches (a pipeline on a cluster: the multi
    script needs one slot)."""
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=5, keys=KeySpace(cprefix), coalesce=True)  # type: ignore[arg-type]
    try:
        decisions = await asyncio.gather(*[gcra.try_acquire(NAMES[i % 6]) for i in range(60)])
        assert sum(d.allowed for d in decisions) == 30  # 5 of the 10 calls of each of the 6 names
    finally:
        await gcra.aclose()


async def test_coalesced_idempotency_claims_on_the_cluster(rc: RedisCluster, cprefix: str) -> None:
    store = IdempotencyStore(rc, lease=5.0, keys=KeySpace(cprefix), coalesce=True)  # type: ignore[arg-type]
    try:
        claims = await asyncio.gather(*[store.claim(NAMES[i % 6]) for i in range(24)])
        assert sum(isinstance(c, Claimed) for c in claims) == 6
    finally:
        await store.aclose()
