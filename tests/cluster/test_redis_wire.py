"""The lean per-node transport on Redis Cluster (``sluice.resilience._wire_cluster``), on the loopback cluster.

Decisions go straight to the node of their slot (the client's own slot map and connections), a batch is
split by node and each node's part is one node script; when the client's slot map is stale (here: a slot
pointed at the wrong master by hand, as after a resharding or a fail-over the client has not seen yet) the
node answers MOVED, or a node script's call meets a key the node does not hold, and that call goes again
through the client, which follows the redirection and mends its map; NOSCRIPT (after ``SCRIPT FLUSH``, as on
a promoted replica) loads the script on that node. Every decision stays exact throughout.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import RedisCluster

from sluice.resilience import GCRALimiter, IdempotencyStore, KeySpace, Rate
from sluice.resilience._wire_cluster import ClusterWire

pytestmark = pytest.mark.timeout(300)

NAMES = [f"api-{i}" for i in range(12)]  # spread over the three masters' slots


def wire_of(limiter: object) -> ClusterWire:
    wire = limiter._runner._cluster  # type: ignore[attr-defined]
    assert isinstance(wire, ClusterWire)
    return wire


async def test_decisions_go_to_their_node_on_the_lean_path(rc: RedisCluster, cprefix: str) -> None:
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=3, keys=KeySpace(cprefix))  # type: ignore[arg-type]
    try:
        assert len({rc.get_node_from_key(gcra.key(n)).name for n in NAMES}) == 3
        for name in NAMES:
            got = [(await gcra.try_acquire(name)).allowed for _ in range(4)]
            assert got == [True, True, True, False], (name, got)
        wire = wire_of(gcra)
        assert wire.sent == 4 * len(NAMES) and wire.rerouted == 0
    finally:
        await gcra.aclose()


async def _stale(rc: RedisCluster, key: str) -> tuple[int, str]:
    """Point ``key``'s slot at another master in the client's map; (slot, the true owner's name)."""
    slot = rc.keyslot(key)
    owner = rc.nodes_manager.slots_cache[slot][0]
    wrong = next(n for n in rc.get_primaries() if n.name != owner.name)
    rc.nodes_manager.slots_cache[slot] = [wrong]
    return slot, owner.name


async def test_a_stale_slot_map_is_followed_and_mended(rc: RedisCluster, cprefix: str) -> None:
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=3, keys=KeySpace(cprefix))  # type: ignore[arg-type]
    try:
        name = NAMES[0]
        assert (await gcra.try_acquire(name)).allowed
        slot, owner = await _stale(rc, gcra.key(name))
        wire = wire_of(gcra)
        assert (await gcra.try_acquire(name)).allowed  # MOVED from the wrong master: through the client
        assert wire.rerouted == 1
        assert rc.nodes_manager.slots_cache[slot][0].name == owner  # the client mended its map
        assert (await gcra.try_acquire(name)).allowed  # the third unit of the burst, on the lean path again
        assert not (await gcra.try_acquire(name)).allowed
        assert wire.rerouted == 1
    finally:
        await gcra.aclose()


async def test_batches_are_one_node_script_per_node(rc: RedisCluster, cprefix: str) -> None:
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=5, keys=KeySpace(cprefix), coalesce=True)  # type: ignore[arg-type]
    try:
        decisions = await asyncio.gather(*[gcra.try_acquire(NAMES[i % 12]) for i in range(120)])
        assert sum(d.allowed for d in decisions) == 60  # 5 of the 10 calls of each of the 12 names
        wire = wire_of(gcra)
        assert wire.node_batches > 0 and wire.rerouted == 0 and wire.node_scripts
        # a stale slot in a batch: the node script's call for it fails alone ("non local key") and is rerouted
        slot, owner = await _stale(rc, gcra.key(NAMES[0]))
        again = await asyncio.gather(*[gcra.try_acquire(NAMES[i % 12]) for i in range(120)])
        assert sum(d.allowed for d in again) == 0  # every name's burst is spent: none admitted twice
        assert wire.rerouted >= 1 and rc.nodes_manager.slots_cache[slot][0].name == owner
        await gcra.reset(NAMES[0])
        fresh = await asyncio.gather(*[gcra.try_acquire(NAMES[0]) for _ in range(8)])
        assert sum(d.allowed for d in fresh) == 5
    finally:
        await gcra.aclose()


async def _flush_scripts(rc: RedisCluster) -> None:
    """SCRIPT FLUSH on every master (their replicas keep theirs: Redis does not replicate it)."""
    await rc.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)


async def test_noscript_loads_the_script_on_that_node(rc: RedisCluster, cprefix: str) -> None:
    gcra = GCRALimiter(rc, Rate.per_second(1), burst=2, keys=KeySpace(cprefix), coalesce=True)  # type: ignore[arg-type]
    store = IdempotencyStore(rc, lease=5.0, keys=KeySpace(cprefix), coalesce=True)  # type: ignore[arg-type]
    try:
        assert (await gcra.try_acquire(NAMES[0])).allowed
        await _flush_scripts(rc)
        assert (await gcra.try_acquire(NAMES[0])).allowed  # NOSCRIPT, loaded on the node, sent again
        assert not (await gcra.try_acquire(NAMES[0])).allowed
        await _flush_scripts(rc)
        claims = await asyncio.gather(*[store.claim(NAMES[i % 6]) for i in range(24)])  # node scripts
        assert sum(type(c).__name__ == "Claimed" for c in claims) == 6
        assert wire_of(gcra).rerouted == 0 and wire_of(store).rerouted == 0
    finally:
        await gcra.aclose()
        await store.aclose()
