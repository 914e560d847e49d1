"""Publishing the dead copy of a message the worker cannot run, with the reason in its headers.

(The other side, reading and replaying the DLQ for ``sluice dlq``, is :mod:`sluice.deadletters`.)

The copy keeps the body, the original headers and properties (same ``message_id``), is persistent, and
adds ``x-sluice-dead-reason``, ``-detail``, ``-at`` and ``-queue``. It is published to the dead-letter
exchange on a confirm-mode channel; only a confirmed copy lets the consumer ack the original. When the
publish fails the consumer ``nack``s the original without requeue, so the broker's own dead-lettering (the
work queues' ``x-dead-letter-exchange``) still moves it: nothing is lost.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage

from sluice.protocol import H_DEAD_AT, H_DEAD_DETAIL, H_DEAD_QUEUE, H_DEAD_REASON
from sluice.publisher import await_confirm
from sluice.resilience.clock import SYSTEM, Clock
from sluice_worker._wall import wall_ms
from sluice_worker.outcome import DeadLettered

__all__ = ["DeadLetterPublisher", "dead_copy", "persistent_copy"]


def persistent_copy(delivered: DeliveredMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """``delivered`` as a new persistent message: same body, id and properties, these ``headers``."""
    p = delivered.header.properties
    return aio_pika.Message(
        delivered.body,
        headers=headers,
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        message_id=p.message_id,
        timestamp=p.timestamp,
        type=p.message_type,
        app_id=p.app_id,
    )


def dead_copy(delivered: DeliveredMessage, queue: str, dead: DeadLettered, now_ms: int) -> aio_pika.Message:
    """The message to publish to the dead-letter exchange for a delivery taken from sluice queue ``queue``
    (dead at ``now_ms``, ms since the epoch)."""
    p = delivered.header.properties
    headers: dict[str, Any] = dict(p.headers or {})
    headers.update(dead.headers)
    headers[H_DEAD_REASON] = dead.reason
    headers[H_DEAD_DETAIL] = dead.detail
    headers[H_DEAD_AT] = now_ms
    headers[H_DEAD_QUEUE] = queue
    return persistent_copy(delivered, headers)


class DeadLetterPublisher:
    """Confirmed publishes to ``{prefix}.dead`` on a channel of its own."""

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: AbstractExchange,
        timeout: float,
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        self.channel = channel  # strong reference: the exchange's channel must outlive it
        self._exchange = exchange
        self._timeout = timeout
        self._clock = clock

    async def publish(self, delivered: DeliveredMessage, queue: str, dead: DeadLettered) -> None:
        """Publish the dead copy and wait for its confirm; a :class:`PublishError` or
        :class:`BrokerUnavailable` if it was not confirmed."""
        message = dead_copy(delivered, queue, dead, wall_ms(self._clock))
        await await_confirm(
            self._exchange.publish(message, routing_key=queue), self._timeout, "the dead-letter copy"
        )
