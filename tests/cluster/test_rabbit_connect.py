"""``SLUICE_AMQP_URL`` with several nodes, on the loopback 3-node cluster: the first node that answers is
taken, the order is shuffled per connection (a fleet spreads), and no node answering is one clear error."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sluice.connection import NodeRotatingConnection, broker_order, connect, connect_plain
from sluice.errors import BrokerUnavailable
from sluice.settings import Settings
from support.clusters import RabbitCluster
from support.ports import free_port

# the first test to ask for a cluster boots it (about 30 s for RabbitMQ idle; more on a loaded machine)
pytestmark = pytest.mark.timeout(600)


class InOrder(random.Random):
    """A generator whose shuffle keeps the order: the URLs are tried as written."""

    def shuffle(self, x: list[object]) -> None:  # type: ignore[override]
        return None


def test_the_order_is_shuffled_per_connection() -> None:
    urls = [f"amqp://n{i}/" for i in range(3)]
    firsts = Counter(broker_order(urls, random.Random(seed))[0] for seed in range(300))
    assert set(firsts) == set(urls) and min(firsts.values()) > 60, firsts
    assert broker_order(urls[:1]) == urls[:1]
    assert sorted(broker_order(urls)) == urls


async def test_the_first_node_that_answers(rabbit_cluster: RabbitCluster) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = Settings(amqp_url=f"{dead},{rabbit_cluster.url(2)},{rabbit_cluster.url(3)}", connect_timeout=5)
    conn = await connect(settings, "g-first-answer", rng=InOrder())
    try:
        assert isinstance(conn, NodeRotatingConnection) and conn.node_url.port == rabbit_cluster.ports[1]
        channel = await conn.channel()
        await channel.close()
    finally:
        await conn.close()
    plain = await connect_plain(settings, "g-first-answer-plain", rng=InOrder())
    try:
        assert plain.url.port == rabbit_cluster.ports[1]
    finally:
        await plain.close()


async def test_a_fleet_spreads_over_the_nodes(rabbit_cluster: RabbitCluster) -> None:
    settings = Settings(amqp_url=rabbit_cluster.amqp_url)
    conns = [await connect(settings, f"g-spread-{i}") for i in range(24)]
    try:
        ports = Counter(c.node_url.port for c in conns if isinstance(c, NodeRotatingConnection))
    finally:
        for c in conns:
            await c.close()
    assert set(ports) == set(rabbit_cluster.ports), ports  # P(a node gets none of 24) < 1e-3


async def test_no_node_answers() -> None:
    dead = [f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(3)]
    settings = Settings(amqp_url=",".join(dead), connect_timeout=2)
    for connecting in (connect, connect_plain):
        with pytest.raises(BrokerUnavailable, match="no RabbitMQ node answers") as caught:
            await connecting(settings, "g-none")
        assert all(f":{u.rsplit(':', 1)[1].rstrip('/')}" in str(caught.value) for u in dead)
