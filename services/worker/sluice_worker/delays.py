"""Sending a delivery back for later: the :class:`Republish` outcome and its confirmed publisher.

A task that must wait (a retry, a rate limit, an open breaker, an idempotency claim held elsewhere, an
``x-sluice-eta`` still ahead) is not held in the worker: a copy goes to a delay tier queue
(``{prefix}.delay.{ms}``, see :mod:`sluice.topology`) and comes back to its work queue when the tier's TTL
ends. The copy is confirmed by the broker *before* the original is acked, so a crash in between leaves
the original to be redelivered (a duplicate at worst, never a loss). It holds no slot and no prefetch
while it waits. A wait longer than a tier, or between tiers, is served by hops: the copy carries its due
time in ``x-sluice-eta`` and a worker that gets it early sends it on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage

from sluice.connection import BROKER_ERRORS
from sluice.errors import BrokerUnavailable
from sluice.protocol import H_ETA, TaskMessage, now_ms
from sluice.publisher import await_confirm
from sluice.topology import DELAY_TIERS_MS, Topology, next_hop
from sluice_worker.deadletter import persistent_copy

__all__ = ["DelayPublisher", "Republish", "defer", "due", "retry"]

# why a delivery is sent back; "retry" is the only one that spends an attempt
RETRY = "retry"
ETA = "eta"


@dataclass(frozen=True, slots=True)
class Republish:
    """Publish the task again (to delay tier ``tier_ms``, or straight to its queue when ``None``) with
    ``headers`` updated, confirmed, then ack the delivery."""

    why: str
    tier_ms: int | None
    headers: Mapping[str, Any] = field(default_factory=dict)


def _tier(delay_ms: int, *, at_least_one_tier: bool) -> int | None:
    tier = next_hop(delay_ms)
    if tier is None and at_least_one_tier:
        return DELAY_TIERS_MS[0]
    return tier


def due(msg: TaskMessage) -> Republish | None:
    """``None`` when the task may run now, else where to send it on (its ``x-sluice-eta`` is ahead)."""
    if msg.eta_ms is None:
        return None
    tier = next_hop(msg.eta_ms - now_ms())
    return None if tier is None else Republish(ETA, tier)


def defer(why: str, seconds: float) -> Republish:
    """Come back in about ``seconds`` (at least the shortest tier), without spending an attempt."""
    delay_ms = max(0, round(seconds * 1000))
    return Republish(why, _tier(delay_ms, at_least_one_tier=True), {H_ETA: now_ms() + delay_ms})


def retry(seconds: float, headers: Mapping[str, Any]) -> Republish:
    """Run again in about ``seconds`` (a short delay goes straight back to the queue); ``headers`` carry
    the next attempt number and the failure times."""
    delay_ms = max(0, round(seconds * 1000))
    return Republish(RETRY, _tier(delay_ms, at_least_one_tier=False), {**headers, H_ETA: now_ms() + delay_ms})


def copy_for(delivered: DeliveredMessage, updates: Mapping[str, Any]) -> aio_pika.Message:
    """The delivery as a new persistent message with the same id and properties, headers updated."""
    p = delivered.header.properties
    headers: dict[str, Any] = dict(p.headers or {})
    for k in ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"):
        headers.pop(k, None)
    for k in ("x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count"):
        headers.pop(k, None)
    headers.update(updates)
    return persistent_copy(delivered, headers)


class DelayPublisher:
    """Confirmed publishes of :class:`Republish` copies, on a confirm-mode channel.

    The delay exchange and its tier queues are declared on the first copy that needs them, not when the
    session opens: a worker whose tasks never wait creates none of them.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        tasks_exchange: AbstractExchange,
        topology: Topology,
        timeout: float,
    ) -> None:
        self.channel = channel  # strong reference: the exchanges' channel must outlive them
        self._tasks = tasks_exchange
        self._delay: AbstractExchange | None = None
        self._declaring = asyncio.Lock()
        self._topology = topology
        self._timeout = timeout

    async def _delay_exchange(self) -> AbstractExchange:
        if self._delay is None:
            async with self._declaring:
                if self._delay is None:
                    try:
                        self._delay = await self._topology.declare_delays(self.channel)
                    except BROKER_ERRORS as e:
                        raise BrokerUnavailable(f"cannot declare the delay queues: {e!r}") from None
        return self._delay

    async def publish(self, delivered: DeliveredMessage, queue: str, out: Republish) -> None:
        """Publish the copy and wait for its confirm; a ``PublishError`` or ``BrokerUnavailable`` if not."""
        message = copy_for(delivered, out.headers)
        if out.tier_ms is None:
            exchange, key = self._tasks, queue
        else:
            exchange = await self._delay_exchange()
            key = self._topology.delay_routing_key(out.tier_ms, queue)
        await await_confirm(exchange.publish(message, routing_key=key), self._timeout, "the delayed copy")
