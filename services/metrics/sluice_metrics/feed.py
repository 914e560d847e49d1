"""The snapshot feed: consume every telemetry snapshot from ``{prefix}.metrics`` into a ProcessTable.

An exclusive, server-named queue bound with ``#`` holds the snapshots for this service only; it is
capped (``x-max-length``) and its messages expire after 10 s, so a stalled service never piles them
up. Deliveries are not acked (``no_ack``): a lost snapshot is replaced by the next one a second later.
The connection is plain: :attr:`SnapshotFeed.lost` is set when it closes, and the service opens a new
feed (a new queue, bound and consumed afresh) rather than trusting a robust connection to restore a
server-named exclusive queue and its consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from sluice.connection import BROKER_ERRORS, connect_plain
from sluice.settings import Settings
from sluice.telemetry import declare_metrics_exchange
from sluice_metrics.processes import ProcessTable

__all__ = ["SnapshotFeed"]

log = logging.getLogger("sluice.metrics")

_QUEUE_ARGS: dict[str, Any] = {"x-max-length": 10_000, "x-message-ttl": 10_000}


class SnapshotFeed:
    """Feeds ``table`` while inside ``async with``. Fails at entry if the broker is not there."""

    def __init__(
        self, settings: Settings, table: ProcessTable, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._table = table
        self._clock = clock
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None
        self.received = asyncio.Event()  # set on every accepted snapshot
        self.lost = asyncio.Event()  # set when the connection closes: open a new feed

    async def __aenter__(self) -> Self:
        s = self._settings
        self._connection = await connect_plain(s, f"sluice-metrics feed {s.prefix}")
        self._connection.close_callbacks.add(lambda *_: self.lost.set())
        try:
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=200)
            exchange = await declare_metrics_exchange(channel, s.prefix)
            self._queue = await channel.declare_queue(exclusive=True, auto_delete=True, arguments=_QUEUE_ARGS)
            await self._queue.bind(exchange, routing_key="#")
            await self._queue.consume(self._on_message, no_ack=True)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            with contextlib.suppress(TimeoutError, *BROKER_ERRORS):
                async with asyncio.timeout(2.0):
                    await conn.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            doc = json.loads(message.body)
        except ValueError:
            self._table.invalid += 1
            return
        if self._table.ingest(doc, self._clock()):
            self.received.set()
