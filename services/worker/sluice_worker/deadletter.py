"""Moving a message the worker cannot run to the dead-letter queue, with the reason in its headers.

The copy keeps the body, the original headers and properties (same ``message_id``), is persistent, and
adds ``x-sluice-dead-reason``, ``-detail``, ``-at`` and ``-queue``. It is published to the dead-letter
exchange on a confirm-mode channel; only a confirmed copy lets the consumer ack the original. When the
publish fails the consumer ``nack``s the original without requeue, so the broker's own dead-lettering (the
work queues' ``x-dead-letter-exchange``) still moves it: nothing is lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange
from aiormq.abc import DeliveredMessage

from sluice.protocol import H_DEAD_AT, H_DEAD_DETAIL, H_DEAD_QUEUE, H_DEAD_REASON, now_ms
from sluice.publisher import await_confirm
from sluice_worker.outcome import DeadLetter

__all__ = ["DeadLetterPublisher", "LogThrottle", "dead_copy", "persistent_copy"]

log = logging.getLogger("sluice.worker")


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


def dead_copy(delivered: DeliveredMessage, queue: str, dead: DeadLetter) -> aio_pika.Message:
    """The message to publish to the dead-letter exchange for a delivery taken from sluice queue ``queue``."""
    p = delivered.header.properties
    headers: dict[str, Any] = dict(p.headers or {})
    headers.update(dead.headers)
    headers[H_DEAD_REASON] = dead.reason
    headers[H_DEAD_DETAIL] = dead.detail
    headers[H_DEAD_AT] = now_ms()
    headers[H_DEAD_QUEUE] = queue
    return persistent_copy(delivered, headers)


class DeadLetterPublisher:
    """Confirmed publishes to ``{prefix}.dead`` on a channel of its own."""

    def __init__(self, channel: AbstractChannel, exchange: AbstractExchange, timeout: float) -> None:
        self.channel = channel  # strong reference: the exchange's channel must outlive it
        self._exchange = exchange
        self._timeout = timeout

    async def publish(self, delivered: DeliveredMessage, queue: str, dead: DeadLetter) -> None:
        """Publish the dead copy and wait for its confirm; a :class:`PublishError` or
        :class:`BrokerUnavailable` if it was not confirmed."""
        message = dead_copy(delivered, queue, dead)
        await await_confirm(
            self._exchange.publish(message, routing_key=queue), self._timeout, "the dead-letter copy"
        )


class LogThrottle:
    """At most ``limit`` log lines per ``period`` seconds; counts the ones it holds back.

    >>> t = LogThrottle(limit=2, period=10.0)
    >>> [t.allow() for _ in range(3)]
    [True, True, False]
    """

    __slots__ = ("_count", "_limit", "_period", "_start", "suppressed")

    def __init__(self, limit: int = 10, period: float = 10.0) -> None:
        self._limit = limit
        self._period = period
        self._start = time.monotonic()
        self._count = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start >= self._period:
            self.flush()
            self._start, self._count = now, 0
        if self._count < self._limit:
            self._count += 1
            return True
        self.suppressed += 1
        return False

    def flush(self) -> None:
        """Log how many lines were held back, if any."""
        if self.suppressed:
            log.warning("%d more dead-lettered messages were not logged", self.suppressed)
            self.suppressed = 0
