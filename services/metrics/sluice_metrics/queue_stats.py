"""Queue depth and consumer count, read from RabbitMQ over AMQP at scrape time.

A passive ``queue.declare`` answers with the queue's ready-message count and consumer count without
creating or changing anything, so this needs no management plugin. A queue that does not exist makes
the broker close the channel (404): it is reported absent, the channel is reopened and the read goes
on with the next queue.

The source keeps one plain (not robust) connection between reads and drops it on any broker error;
the next read connects again. Every read finishes within its timeout: a broker outage makes a read
come back quickly with ``broker_up=False`` instead of hanging a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection

from sluice._closing import AsyncClosing
from sluice.connection import BROKER_ERRORS, connect_plain
from sluice.errors import BrokerUnavailable, ConfigError
from sluice.settings import Settings
from sluice.topology import DELAY_TIERS_MS, Topology

__all__ = ["MAX_QUEUES", "QueueSnapshot", "QueueStats", "QueueStatsSource", "delay_queues", "queues_to_watch"]

# a broker that cannot be read: lost or refused (aio-pika's errors), or no node answered (connect_plain)
_DOWN: tuple[type[BaseException], ...] = (*BROKER_ERRORS, BrokerUnavailable)

MAX_QUEUES = 200

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *BROKER_ERRORS)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue as the broker reported it: ``present`` False when it does not exist."""

    queue: str
    present: bool
    messages: int = 0
    consumers: int = 0


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The result of one read: every watched queue, and what went wrong (error kind -> count)."""

    broker_up: bool
    queues: tuple[QueueStats, ...] = ()
    errors: dict[str, int] = field(default_factory=dict)
    duration: float = 0.0


def queues_to_watch(settings: Settings, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """RabbitMQ names of the queues to report: the default work queue, ``extra`` work queues, the DLQ."""
    topo = Topology.from_settings(settings)
    names = [topo.queue(settings.default_queue), *(topo.queue(q) for q in extra), topo.dead_queue]
    return tuple(dict.fromkeys(names))  # de-duplicated, order kept


def delay_queues(settings: Settings) -> tuple[str, ...]:
    """The delay tier queues (reported only where they exist)."""
    topo = Topology.from_settings(settings)
    return tuple(topo.delay_queue(ms) for ms in DELAY_TIERS_MS)


class QueueStatsSource(AsyncClosing):
    """Reads :class:`QueueStats` for a fixed list of queues. An async context manager.

    Reads are serialised: two scrapes at once take turns on the one connection.
    """

    def __init__(
        self,
        settings: Settings,
        queues: Sequence[str],
        *,
        timeout: float = 3.0,
        optional: Sequence[str] = (),
    ) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        self._settings = settings  # its amqp_url may name several nodes (connect_plain tries each)
        self._name = f"sluice-metrics {settings.prefix}"
        self._queues = tuple(queues)
        self._optional = tuple(q for q in optional if q not in self._queues)
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    @property
    def queues(self) -> tuple[str, ...]:
        return self._queues

    def watch(self, names: Iterable[str]) -> None:
        """Report these queues too from the next read on (at most :data:`MAX_QUEUES` in all)."""
        for name in names:
            if name not in self._queues and len(self._queues) + len(self._optional) < MAX_QUEUES:
                self._queues = (*self._queues, name)

    async def aclose(self) -> None:
        """Close the connection, if any; the next read opens a new one."""
        conn, self._connection = self._connection, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(*_CLOSE_ERRORS):
                async with asyncio.timeout(1.0):
                    await conn.close()

    async def read(self) -> QueueSnapshot:
        """Stats of every watched queue, or ``broker_up=False``; never longer than the timeout."""
        async with self._lock:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    stats, errors = await self._read_retrying_stale()
            except TimeoutError:
                failure = "timeout"
            except _DOWN:
                failure = "broker"
            else:
                return QueueSnapshot(True, stats, errors, time.monotonic() - started)
            await self.aclose()
            return QueueSnapshot(False, errors={failure: 1}, duration=time.monotonic() - started)

    async def _read_retrying_stale(self) -> tuple[tuple[QueueStats, ...], dict[str, int]]:
        reused = self._connection is not None and not self._connection.is_closed
        try:
            return await self._read_all()
        except _DOWN:
            if not reused:
                raise
        # the kept connection died since the last read (say, a broker restart): one try on a new one
        await self.aclose()
        return await self._read_all()

    async def _read_all(self) -> tuple[tuple[QueueStats, ...], dict[str, int]]:
        conn = await self._connect()
        channel: AbstractChannel = await conn.channel(publisher_confirms=False)
        out: list[QueueStats] = []
        missing = 0
        try:
            optional = set(self._optional)
            for name in (*self._queues, *self._optional):
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if name not in optional:  # an optional queue that is absent is simply not shown
                        missing += 1
                        out.append(QueueStats(name, present=False))
                    channel = await conn.channel(publisher_confirms=False)  # the 404 closed the old one
                    continue
                ok = queue.declaration_result
                out.append(QueueStats(name, True, int(ok.message_count or 0), int(ok.consumer_count or 0)))
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*BROKER_ERRORS):
                    await channel.close()
        return tuple(out), ({"missing_queue": missing} if missing else {})

    async def _connect(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect_plain(self._settings, self._name)
        return self._connection
