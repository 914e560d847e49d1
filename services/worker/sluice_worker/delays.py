"""Sending a delivery back for later: the transport of a :class:`~sluice_worker.outcome.Deferred` or
:class:`~sluice_worker.outcome.Retry` outcome, and its confirmed publisher.

A task that must wait (a retry, a rate limit, an open breaker, an idempotency claim held elsewhere, an
``x-sluice-eta`` still ahead) is not held in the worker: a copy goes to a delay tier queue
(``{prefix}.delay.{ms}``, see :mod:`sluice.topology`) and comes back to its work queue when the tier's TTL
ends. The copy is confirmed by the broker *before* the original is acked, so a crash in between leaves
the original to be redelivered (a duplicate at worst, never a loss). It holds no slot and no prefetch
while it waits. A wait longer than a tier, or between tiers, is served by hops: the copy carries its due
time in ``x-sluice-eta`` and a worker that gets it early sends it on.

:func:`republish` computes the copy's :class:`Republish` (its tier and header updates) from the outcome,
at the time it is published (the worker's clock): a deferral waits at least the shortest tier and
carries its due time (an ``eta`` hop keeps the one it has); a retry carries the next attempt number and
the first failure's time, and a short one goes straight back to its queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage

from sluice.connection import BROKER_ERRORS
from sluice.errors import BrokerUnavailable
from sluice.protocol import H_ATTEMPT, H_ETA, H_FIRST_FAILURE_AT
from sluice.publisher import await_confirm
from sluice.resilience.clock import SYSTEM, Clock
from sluice.topology import DELAY_TIERS_MS, Topology, next_hop
from sluice_worker._wall import wall_ms
from sluice_worker.dead_publish import persistent_copy
from sluice_worker.outcome import ETA, Deferred, Retry

__all__ = ["DelayPublisher", "Republish", "republish"]


@dataclass(frozen=True, slots=True)
class Republish:
    """How a copy travels: to delay tier ``tier_ms`` (straight to its queue when ``None``), with
    ``headers`` updated."""

    tier_ms: int | None
    headers: Mapping[str, Any]


_KEEP: Mapping[str, Any] = {}


def republish(outcome: Deferred | Retry, now_ms: int) -> Republish:
    """The copy that carries ``outcome`` out, published at ``now_ms`` (ms since the epoch)."""
    delay_ms = max(0, round(outcome.delay * 1000))
    tier = next_hop(delay_ms)
    if isinstance(outcome, Retry):
        headers = {
            H_ATTEMPT: outcome.attempt,
            H_FIRST_FAILURE_AT: outcome.first_failure_ms,
            H_ETA: now_ms + delay_ms,
        }
        return Republish(tier, headers)
    if tier is None:
        tier = DELAY_TIERS_MS[0]  # a deferral waits at least the shortest tier
    return Republish(tier, _KEEP if outcome.reason == ETA else {H_ETA: now_ms + delay_ms})


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
    """Confirmed publishes of the copies of deferrals and retries, on a confirm-mode channel.

    The delay exchange and its tier queues are declared on the first copy that needs them, not when the
    session opens: a worker whose tasks never wait creates none of them.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        tasks_exchange: AbstractExchange,
        topology: Topology,
        timeout: float,
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        self.channel = channel  # strong reference: the exchanges' channel must outlive them
        self._clock = clock
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

    async def publish(self, delivered: DeliveredMessage, queue: str, outcome: Deferred | Retry) -> None:
        """Publish the copy and wait for its confirm; a ``PublishError`` or ``BrokerUnavailable`` if not."""
        out = republish(outcome, wall_ms(self._clock))
        message = copy_for(delivered, out.headers)
        if out.tier_ms is None:
            exchange, key = self._tasks, queue
        else:
            exchange = await self._delay_exchange()
            key = self._topology.delay_routing_key(out.tier_ms, queue)
        await await_confirm(exchange.publish(message, routing_key=key), self._timeout, "the delayed copy")
