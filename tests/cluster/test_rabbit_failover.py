"""kill -9 of the node that leads a quorum work queue, under a confirming publisher and three consumers.

sluice's :class:`~sluice.publisher.Publisher` and three plain aio-pika consumers, each on its own
connection from :func:`sluice.connection.connect` over the three nodes (``SLUICE_AMQP_URL`` with three
URLs). Mid-load the queue's leader is killed (SIGKILL of its beam process). Then:

* every confirmed message is consumed (distinct ids; a redelivery is counted once);
* the publisher reports the unconfirmed ones (each publish either returns or raises: nothing is left
  unaccounted for), and goes on publishing on a surviving node;
* consumption resumes within ``RESUME_BOUND`` seconds of the kill (a message published after the kill
  is consumed), and every one of the three consumers consumes again (those on the dead node reconnect
  to another one: aio-pika restores their consumers);
* the node is started again (``rabbitmq-cluster.sh up``) and rejoins: three running nodes, and the
  queue's three members online again.

Bounds are generous for a loaded 2-core machine: a quorum queue elects a new leader in a few seconds
(measured here: printed by the test), a robust connection retries every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from sluice.connection import NodeRotatingConnection, connect
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology
from support.clusters import RabbitCluster
from support.waiting import eventually, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RESUME_BOUND = 30.0  # seconds from the kill to the first message published after it being consumed
KILL_AFTER = 800  # confirmed messages before the kill
AFTER_KILL = 800  # confirmed messages published after the kill, then the load stops
PUBLISH_BOUND = 90.0  # seconds the load may go on after the kill to reach AFTER_KILL
PUBLISHERS = 8  # concurrent publishing tasks on the one Publisher


@dataclass
class Consumed:
    ids: set[str] = field(default_factory=set)
    deliveries: int = 0
    after_kill: dict[int, int] = field(default_factory=dict)  # consumer -> messages consumed after the kill
    first_new_at: float | None = None  # monotonic time a message published after the kill was consumed
    new_ids: set[str] = field(default_factory=set)  # the ids published after the kill


async def test_kill_the_quorum_queue_leader_under_load(rabbit_cluster: RabbitCluster, unique: str) -> None:
    settings = Settings(
        amqp_url=rabbit_cluster.amqp_url, prefix=unique, connect_timeout=10, publish_timeout=15, prefetch=50
    )
    topology = Topology.from_settings(settings)
    queue_name = topology.queue("default")
    consumed = Consumed()
    killed_at: list[float] = []
    published_after_kill = consumed.new_ids
    confirmed: set[str] = set()
    unconfirmed: dict[str, str] = {}

    async with Publisher(settings, name="g-failover-publisher") as publisher:
        await publisher.ensure_queue("default")  # declared from the publisher's node (client-local leader)
        pub_conn = publisher.connection
        assert isinstance(pub_conn, NodeRotatingConnection)
        pub_node = rabbit_cluster.node_of_port(pub_conn.node_url.port or 0)
        leader, online = rabbit_cluster.queue_leader(queue_name, via=pub_node)
        assert len(online) == 3, online
        print(f"publisher on node {pub_node}, queue leader on node {leader}")

        # consumer i starts on node leader+i (consumer 0 on the leader), then moves on round the list
        consumers = [
            await _consumer(settings, _rotated(rabbit_cluster, leader, i), topology, i, consumed, killed_at)
            for i in range(3)
        ]
        try:
            nodes_before = [_node(rabbit_cluster, c) for c, _ in consumers]
            print(f"consumers on nodes {nodes_before}")
            assert nodes_before[0] == leader
            stop = asyncio.Event()

            async def publish_some() -> None:
                while not stop.is_set():
                    msg = TaskMessage(task="demo.noop", payload={})
                    after = bool(killed_at)
                    if after:
                        published_after_kill.add(msg.id)
                    try:
                        await publisher.publish(msg)
                    except Exception as e:  # every failure is reported: the test counts them
                        unconfirmed[msg.id] = f"{type(e).__name__}: {str(e)[:80]}"
                        await asyncio.sleep(0.05)  # no leader yet, or no connection: back off
                        continue
                    confirmed.add(msg.id)
                    if after and len(published_after_kill & confirmed) >= AFTER_KILL:
                        stop.set()
                    await asyncio.sleep(0.002)

            async def kill_mid_load() -> None:
                await eventually(
                    lambda: len(confirmed) >= KILL_AFTER, within=120, what="load before the kill"
                )
                await asyncio.to_thread(rabbit_cluster.kill, leader)
                killed_at.append(time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PUBLISH_BOUND)
                stop.set()

            await asyncio.gather(kill_mid_load(), *(publish_some() for _ in range(PUBLISHERS)))
            published_done = time.monotonic()
            total = len(confirmed) + len(unconfirmed)
            print(
                f"published {total}: {len(confirmed)} confirmed, {len(unconfirmed)} unconfirmed "
                f"({sorted(set(unconfirmed.values()))[:3]}); publisher now on node "
                f"{rabbit_cluster.node_of_port(pub_conn.node_url.port or 0)}; load went on "
                f"{published_done - killed_at[0]:.1f}s after the kill; {publisher.renewals} new channel(s)"
            )
            assert len(published_after_kill & confirmed) >= AFTER_KILL, "the publisher did not recover"
            if any(e.startswith("PublishNacked") for e in unconfirmed.values()):
                assert publisher.renewals >= 1  # the Publisher renewed its nacked channel by itself

            await eventually(
                lambda: confirmed <= consumed.ids, within=120, what="every confirmed message consumed"
            )
            assert consumed.first_new_at is not None
            resumed = consumed.first_new_at - killed_at[0]
            print(
                f"consumed {len(consumed.ids)} distinct ({consumed.deliveries} deliveries); resumed "
                f"{resumed:.1f}s after the kill; per consumer after it: {consumed.after_kill}"
            )
            assert resumed < RESUME_BOUND
            await eventually(
                lambda: len(consumed.after_kill) == 3, within=60, what="every consumer consuming again"
            )
            nodes_after = [_node(rabbit_cluster, c) for c, _ in consumers]
            assert leader not in nodes_after, (nodes_before, nodes_after)

            started = time.monotonic()
            await asyncio.to_thread(rabbit_cluster.up)
            survivor = next(n for n in (1, 2, 3) if n != leader)
            wait_until(
                lambda: len(rabbit_cluster.running_nodes(via=survivor)) == 3,
                within=120,
                what="three running nodes",
            )
            await eventually(
                lambda: len(rabbit_cluster.queue_leader(queue_name, via=survivor)[1]) == 3,
                within=120,
                what="the queue's three members online",
                every=1.0,
            )
            print(f"node {leader} restarted and rejoined in {time.monotonic() - started:.1f}s")
        finally:
            for conn, _ in consumers:
                await conn.close()
            channel = await pub_conn.channel()
            await channel.queue_delete(queue_name)
            await channel.close()


class _InOrder(random.Random):
    def shuffle(self, x: list[object]) -> None:  # type: ignore[override]
        return None


def _rotated(cluster: RabbitCluster, first: int, shift: int) -> str:
    """The cluster's URLs starting with node ``first + shift`` (1-3, round)."""
    start = (first - 1 + shift) % 3
    return ",".join(cluster.urls[start:] + cluster.urls[:start])


async def _consumer(
    settings: Settings,
    urls: str,
    topology: Topology,
    number: int,
    consumed: Consumed,
    killed_at: list[float],
) -> tuple[AbstractRobustConnection, object]:
    mine = settings.model_copy(update={"amqp_url": urls})
    conn = await connect(mine, f"g-failover-consumer-{number}", rng=_InOrder())
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=settings.prefetch)
    await topology.declare_base(channel)
    queue = await topology.declare_queue(channel, "default")

    async def on_message(message: AbstractIncomingMessage) -> None:
        consumed.deliveries += 1
        if message.message_id is not None:
            consumed.ids.add(message.message_id)
        if killed_at:
            consumed.after_kill[number] = consumed.after_kill.get(number, 0) + 1
            if consumed.first_new_at is None and message.message_id in consumed.new_ids:
                consumed.first_new_at = time.monotonic()
        with contextlib.suppress(Exception):  # the channel died under it: redelivered, counted once
            await message.ack()

    await queue.consume(on_message)
    return conn, (channel, queue)  # strong references: aio-pika restores what is alive


def _node(cluster: RabbitCluster, conn: AbstractRobustConnection) -> int:
    assert isinstance(conn, NodeRotatingConnection)
    return cluster.node_of_port(conn.node_url.port or 0)
