"""Names and declarations of everything sluice keeps on RabbitMQ.

Every name starts with the configured prefix (``sluice`` by default)::

    {prefix}.tasks        direct exchange; a task for queue Q is published with routing key Q
    {prefix}.q.{Q}        durable work queue for queue name Q (quorum by default, classic as an option)
    {prefix}.dead         fanout exchange every work queue dead-letters to
    {prefix}.dlq          the dead-letter queue, bound to {prefix}.dead
    {prefix}.delay        topic exchange for delayed tasks: routing key "{tier_ms}.{Q}"
    {prefix}.delay.{ms}   one queue per delay tier (1 s, 2 s, 4 s ... 65,536 s), bound with "{ms}.#";
                          no consumer: each message expires after exactly {ms} and is dead-lettered to
    {prefix}.requeue      topic exchange; work queue Q is bound to it with "*.{Q}", so an expired
                          delayed task returns to the queue it was meant for
    {prefix}.q.{Q}.f{i}   the sub-queues of a fair queue Q (i < its shards, :mod:`sluice.fair`): each
                          declared as the work queue of sluice queue "{Q}.f{i}", so it is bound with
                          routing key "{Q}.f{i}" and "*.{Q}.f{i}", and a delayed fair task comes back
                          to its sub-queue

One queue per fixed delay, because RabbitMQ expires messages only from a queue's head: a short delay
never waits behind a longer one. A delay is served by the largest tier that fits; what remains is
served by further hops (the worker sees ``x-sluice-eta`` still ahead and sends it on).

Declaring is idempotent: every service declares what it uses when it starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from sluice.errors import ConfigError
from sluice.settings import Settings

__all__ = [
    "DELAY_TIERS_MS",
    "DUE_SLACK_MS",
    "QUEUE_NAME",
    "Topology",
    "check_queue_name",
    "delay_tier",
    "next_hop",
]

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,200}$")
DELAY_TIERS_MS: tuple[int, ...] = tuple(1000 * 2**i for i in range(17))  # 1 s .. 65,536 s (18.2 h)
DUE_SLACK_MS = 500  # a task due within this is run now: delays are kept to +-0.5 s


def delay_tier(delay_ms: int) -> int:
    """The delay tier for a wait of ``delay_ms``: the largest tier not longer than it (at least 1 s)."""
    best = DELAY_TIERS_MS[0]
    for tier in DELAY_TIERS_MS:
        if tier > delay_ms:
            break
        best = tier
    return best


def next_hop(remaining_ms: int, slack_ms: int = DUE_SLACK_MS) -> int | None:
    """The tier to wait in for a task due in ``remaining_ms``; ``None`` when it is due (within ``slack_ms``).

    The tier is the largest one not longer than ``remaining_ms + slack_ms``, so each hop ends at most
    ``slack_ms`` late and the last one at most ``slack_ms`` early.
    """
    if remaining_ms <= slack_ms:
        return None
    return delay_tier(remaining_ms + slack_ms)


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str = "sluice"
    queue_type: Literal["quorum", "classic"] = "quorum"
    delivery_limit: int = 20

    @classmethod
    def from_settings(cls, s: Settings) -> Topology:
        return cls(prefix=s.prefix, queue_type=s.queue_type, delivery_limit=s.delivery_limit)

    # ---- names
    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def delay_exchange(self) -> str:
        return f"{self.prefix}.delay"

    @property
    def requeue_exchange(self) -> str:
        return f"{self.prefix}.requeue"

    def delay_queue(self, tier_ms: int) -> str:
        return f"{self.prefix}.delay.{tier_ms}"

    def delay_routing_key(self, tier_ms: int, queue: str) -> str:
        return f"{tier_ms}.{queue}"

    def queue(self, name: str) -> str:
        """The RabbitMQ queue that holds sluice queue ``name``."""
        check_queue_name(name)
        return f"{self.prefix}.q.{name}"

    def queue_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dead_exchange}
        if self.queue_type == "quorum":
            args.update(
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.delivery_limit,
                    # at-least-once dead-lettering needs reject-publish overflow (RabbitMQ >= 3.10)
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        return args

    def delay_queue_arguments(self, tier_ms: int) -> dict[str, Any]:
        args: dict[str, Any] = {"x-message-ttl": tier_ms, "x-dead-letter-exchange": self.requeue_exchange}
        if self.queue_type == "quorum":
            args.update(
                {
                    "x-queue-type": "quorum",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        return args

    def dead_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    # ---- declarations
    async def declare_base(self, channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
        """The tasks exchange, the dead-letter exchange and the DLQ. Returns (tasks, dead)."""
        tasks = await channel.declare_exchange(
            self.tasks_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_exchange(self.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        dlq = await channel.declare_queue(
            self.dead_queue, durable=True, arguments=self.dead_queue_arguments()
        )
        await dlq.bind(dead, routing_key="")
        return tasks, dead

    async def declare_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """The work queue for ``name``, bound to the tasks exchange with routing key ``name``."""
        queue = await channel.declare_queue(self.queue(name), durable=True, arguments=self.queue_arguments())
        await queue.bind(self.tasks_exchange, routing_key=name)
        await channel.declare_exchange(self.requeue_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await queue.bind(self.requeue_exchange, routing_key=f"*.{name}")
        return queue

    async def declare_delays(self, channel: AbstractChannel) -> AbstractExchange:
        """The delay exchange and every delay tier queue. Returns the delay exchange."""
        delay = await channel.declare_exchange(self.delay_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.declare_exchange(self.requeue_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for tier in DELAY_TIERS_MS:
            q = await channel.declare_queue(
                self.delay_queue(tier), durable=True, arguments=self.delay_queue_arguments(tier)
            )
            await q.bind(delay, routing_key=f"{tier}.#")
        return delay


def check_queue_name(name: str) -> str:
    if not QUEUE_NAME.match(name):
        raise ConfigError(f"bad queue name {name!r}: use 1-200 of A-Z a-z 0-9 _ - .")
    return name
