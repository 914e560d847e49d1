"""Publishing tasks with publisher confirms, many in flight at once.

Every publish is persistent, ``mandatory`` (an unroutable task raises instead of vanishing) and
confirmed by the broker before it counts as sent. :meth:`Publisher.publish_many` keeps up to
``publish_window`` publishes awaiting their confirm at once instead of one round trip per task.

A nack renews the channel (at most once every ``RENEW_AFTER_NACK`` seconds): on RabbitMQ 3.10 a channel
that a quorum queue nacked while it had no leader (its leader's node died) went on being nacked by that
queue for 90 s after a new leader was elected, while a new channel was confirmed at once (measured on the
loopback cluster: tests/cluster/test_rabbit_failover.py). The old channel is closed once the publishes
still awaiting its confirms have had ``publish_timeout`` to get them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Collection, Iterable
from typing import Any, Self, cast

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq import spec

from sluice._amqp_properties import TaskProperties
from sluice._closing import AsyncClosing
from sluice._publish_window import GaveUp, Outgoing, Prepared, PublishOutcome, PublishReport, PublishWindow
from sluice.connection import BROKER_ERRORS, connect
from sluice.errors import (
    BrokerUnavailable,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
    UnknownQueue,
)
from sluice.fair import FairRoutes, sub_queues
from sluice.protocol import CONTENT_TYPE, TaskMessage, encode_body, now_ms
from sluice.settings import Settings
from sluice.topology import Topology, next_hop

__all__ = [
    "GaveUp",
    "Prepared",
    "PublishOutcome",
    "PublishReport",
    "Publisher",
    "await_confirm",
    "creatable_queues",
]

PERSISTENT = 2
RENEW_AFTER_NACK = 1.0  # seconds: at most one new channel per second after nacks (a full queue nacks each)
_RENEW_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *BROKER_ERRORS)


def creatable_queues(settings: Settings, task_queues: Iterable[str] = ()) -> frozenset[str]:
    """The queues a producer may create: the default queue, ``SLUICE_QUEUES`` and the queues of the
    tasks it knows (``--tasks``)."""
    return frozenset((settings.default_queue, *settings.queues, *task_queues))


class Publisher(AsyncClosing):
    """An async context manager owning one connection and one confirm-mode channel.

    ``creatable``: the work queues this publisher may declare (create). ``None`` (the library's
    default, for trusted code) declares any queue a task names. A producer that publishes on behalf
    of others (the HTTP API, the CLI) passes :func:`creatable_queues`: a task for any other queue is
    published only if that queue already exists on the broker, else :class:`UnknownQueue` is raised,
    so no caller can make the broker create queues (each quorum queue is a Raft group).

    ``fair``: the fair tasks it knows (:meth:`sluice.tasks.Registry.fair_routes`): each is published to
    its tenant's sub-queue (:mod:`sluice.fair`), directly or through a delay tier, and the sub-queues are
    declared (or found) with their queue.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connection: AbstractRobustConnection | None = None,
        name: str = "sluice-publisher",
        creatable: Collection[str] | None = None,
        fair: FairRoutes | None = None,
    ) -> None:
        self.settings = settings
        self.fair = fair if fair else None
        self.creatable = None if creatable is None else frozenset(creatable)
        self.topology = Topology.from_settings(settings)
        self._name = name
        self._conn = connection
        self._own_conn = connection is None
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.Channel | None = None  # the channel's current aiormq channel, while open
        self._tasks_ex: AbstractExchange | None = None
        self._dead_ex: AbstractExchange | None = None
        self._queues: set[str] = set()
        self._delays_declared = False
        self._declare_lock = asyncio.Lock()
        self._stale = False  # a nack was seen: the next publish opens a new channel first
        self._renewed_at = -RENEW_AFTER_NACK
        self._retired: list[tuple[float, AbstractChannel]] = []  # old channels, closed after their confirms
        self.renewals = 0  # channels opened after a nack

    async def __aenter__(self) -> Self:
        if self._conn is None:
            self._conn = await connect(self.settings, self._name)
        try:
            self._channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
            self._tasks_ex, self._dead_ex = await self.topology.declare_base(self._channel)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Close the channel (and the connection, if it is ours), within ``publish_timeout``: a broker
        that blocks the connection (a memory or disk alarm) stops reading from it, so its close
        handshake never completes; past the deadline the connection is left to the process's exit."""
        channel, self._channel, self._underlay = self._channel, None, None
        retired, self._retired = [c for _, c in self._retired], []
        conn, self._conn = (self._conn, None) if self._own_conn else (None, self._conn)
        with contextlib.suppress(TimeoutError, *BROKER_ERRORS):
            async with asyncio.timeout(self.settings.publish_timeout):
                for old in [*retired, channel]:
                    if old is not None:
                        with contextlib.suppress(*BROKER_ERRORS):
                            await old.close()
                if conn is not None:
                    await conn.close()

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            raise BrokerUnavailable("publisher is not open")
        return self._conn

    @property
    def is_connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed and self._channel is not None

    async def ensure_queue(self, name: str) -> None:
        """Declare the work queue ``name`` (once per publisher) so a task for it is routable.

        A queue outside ``creatable`` is not declared: it must exist already (:class:`UnknownQueue`).
        """
        if name in self._queues:
            return
        async with self._declare_lock:
            if name in self._queues:
                return
            if self._channel is None or self._conn is None:
                raise BrokerUnavailable("publisher is not open")
            shards = self.fair.shards(name) if self.fair is not None else None
            names = [name, *sub_queues(name, shards)] if shards is not None else [name]
            try:
                for q in names:  # a fair queue's sub-queues with it (sluice.fair)
                    if self.creatable is None or name in self.creatable:
                        await self.topology.declare_queue(self._channel, q)
                    elif not await self._exists(self._conn, q):
                        raise UnknownQueue(q, sorted(self.creatable))
            except BROKER_ERRORS as e:
                raise BrokerUnavailable(f"cannot declare queue {name!r}: {e}") from None
            self._queues.update(names)

    async def _exists(self, conn: AbstractRobustConnection, name: str) -> bool:
        """Does the work queue ``name`` exist? A passive declare, on a channel of its own: a missing
        queue closes the channel it was asked on (404), never the publishing one."""
        channel = await conn.channel()
        try:
            await channel.declare_queue(self.topology.queue(name), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(*BROKER_ERRORS):
                await channel.close()
        return True

    async def ensure_delays(self) -> None:
        """Declare the delay exchange and its tier queues (once per publisher)."""
        if self._delays_declared:
            return
        async with self._declare_lock:
            if self._delays_declared:
                return
            if self._channel is None:
                raise BrokerUnavailable("publisher is not open")
            try:
                await self.topology.declare_delays(self._channel)
            except BROKER_ERRORS as e:
                raise BrokerUnavailable(f"cannot declare the delay queues: {e}") from None
            self._delays_declared = True

    def properties(self, msg: TaskMessage) -> spec.Basic.Properties:
        """The AMQP properties of a task (the contract's, see docs/protocol.md)."""
        return TaskProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=msg.id,
            headers=msg.headers(),
            app_id="sluice",
        )

    def message(self, msg: TaskMessage, body: bytes | None = None) -> aio_pika.Message:
        """The task as an aio-pika message (body encoded and size-checked if not given)."""
        if body is None:
            body = encode_body(msg.payload, self.settings.max_message_bytes)
        return aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg.id,
            headers=msg.headers(),
            app_id="sluice",
        )

    async def publish(self, msg: TaskMessage, body: bytes | None = None, *, bounded: bool = True) -> str:
        """Publish one task and wait for its confirm. Returns the task id.

        ``bounded=False``: no deadline of its own on the confirm (a :class:`PublishWindow` bounds all its
        publishes with one watchdog instead of a timer per publish); the caller must bound the wait.

        The hot path talks to the aiormq channel directly: no intermediate message object, and the
        frame is handed to the writer without waiting for the socket drain (the confirm is what counts).
        """
        if msg.queue not in self._queues:
            await self.ensure_queue(msg.queue)
        if body is None:
            body = encode_body(msg.payload, self.settings.max_message_bytes)
        # a fair task goes to its tenant's sub-queue (declared with its queue); its header keeps the queue
        target = msg.queue if self.fair is None else self.fair.route(msg.task, msg.queue, msg.payload)
        if msg.eta_ms is not None:
            tier = next_hop(msg.eta_ms - now_ms())
            if tier is not None:
                await self.publish_delayed(body, target, self.properties(msg), tier, bounded=bounded)
                return msg.id
        await self._publish_body(
            self.topology.tasks_exchange, target, body, self.properties(msg), bounded=bounded
        )
        return msg.id

    async def publish_properties(
        self, body: bytes, routing_key: str, properties: spec.Basic.Properties
    ) -> None:
        """Publish a body with prepared properties to the tasks exchange and wait for the confirm."""
        await self._publish_body(self.topology.tasks_exchange, routing_key, body, properties)

    async def _publish_body(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        bounded: bool = True,
    ) -> None:
        if self._stale:
            await self._renew()
        channel = self._underlay
        if channel is None or channel.is_closed:
            channel = self._underlay = await self._open_underlay()
        # aiormq's own deadline (it has one around the publish and its confirm anyway): no second timer
        within = self.settings.publish_timeout
        pending = channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            wait=False,
            timeout=within if bounded else None,
        )
        try:
            await await_confirm(pending, within, timed=False)
        except PublishNacked:
            self._stale = True
            raise

    async def _renew(self) -> None:
        """After a nack: a new confirm-mode channel for the publishes from now on (see the module
        docstring); the old one is retired, closed once its confirms had ``publish_timeout``."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._renewed_at < RENEW_AFTER_NACK or self._conn is None or self._channel is None:
            return
        self._stale = False
        self._renewed_at = now
        async with self._declare_lock:
            try:
                async with asyncio.timeout(self.settings.publish_timeout):  # a reconnecting link waits
                    fresh = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
                    tasks_ex, dead_ex = await self.topology.declare_base(fresh)
            except _RENEW_ERRORS:
                self._stale = True  # no channel now (the broker is busy electing): the next publish tries
                return
            old, self._channel, self._underlay = self._channel, fresh, None
            self._tasks_ex, self._dead_ex = tasks_ex, dead_ex
            self.renewals += 1
        self._retired.append((now, old))
        due = [c for at, c in self._retired if now - at > self.settings.publish_timeout]
        self._retired = [(at, c) for at, c in self._retired if now - at <= self.settings.publish_timeout]
        for c in due:
            with contextlib.suppress(TimeoutError, *BROKER_ERRORS):
                async with asyncio.timeout(self.settings.publish_timeout):
                    await c.close()

    async def _open_underlay(self) -> aiormq.Channel:
        """The robust channel's aiormq channel (kept until it closes: a reconnect opens a new one)."""
        if self._channel is None:
            raise BrokerUnavailable("publisher is not open")
        try:
            if self.connection.connected.is_set():
                # the concrete aiormq channel: its basic_publish takes wait=False, the abstract one does not say so
                channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            else:  # a robust channel waits here while it reconnects: within the publish deadline
                async with asyncio.timeout(self.settings.publish_timeout):
                    channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        except TimeoutError:
            raise BrokerUnavailable(
                f"not connected to the broker within {self.settings.publish_timeout:g}s"
            ) from None
        except BROKER_ERRORS as e:
            raise BrokerUnavailable(f"no channel to the broker: {e}") from None
        return channel

    async def publish_delayed(
        self,
        body: bytes,
        queue: str,
        properties: spec.Basic.Properties,
        tier_ms: int,
        *,
        bounded: bool = True,
    ) -> None:
        """Publish to the delay tier ``tier_ms`` (see :data:`~sluice.topology.DELAY_TIERS_MS`), confirmed:
        the task reaches work queue ``queue`` when the tier's TTL has passed."""
        if queue not in self._queues:
            await self.ensure_queue(queue)
        await self.ensure_delays()
        key = self.topology.delay_routing_key(tier_ms, queue)
        await self._publish_body(self.topology.delay_exchange, key, body, properties, bounded=bounded)

    async def publish_raw(self, message: aio_pika.Message, routing_key: str, *, dead: bool = False) -> None:
        """Publish a prepared message to the tasks exchange (or the dead-letter exchange), confirmed."""
        ex = self._dead_ex if dead else self._tasks_ex
        if ex is None:
            raise BrokerUnavailable("publisher is not open")
        await self._confirmed(ex.publish(message, routing_key=routing_key))

    async def _confirmed(self, pending: Awaitable[Any]) -> None:
        await await_confirm(pending, self.settings.publish_timeout)

    async def publish_many(
        self,
        messages: Iterable[Outgoing] | AsyncIterable[Outgoing],
        on_done: Callable[[PublishOutcome], None] | None = None,
        *,
        ordered: bool = False,
        give_up_after: float | None = None,
        keep_failed: int | None = None,
        on_outage: Callable[[BaseException | None], None] | None = None,
    ) -> PublishReport:
        """Publish every task with up to ``publish_window`` confirms outstanding; never raises per task.

        A task given as :class:`Prepared` is published with its body as encoded by the caller.

        Each outcome (confirmed or not) is passed to ``on_done``: as it completes, or with ``ordered``
        in input order. ``give_up_after`` (seconds) rides through a broker outage: the feed pauses, the
        tasks not confirmed are published again once the connection is back, and only an outage longer
        than that fails them (:class:`GaveUp`) and stops taking tasks (``report.gave_up``: the rest of
        ``messages`` is left untaken). ``None``: no pause, no re-publish. ``keep_failed`` bounds
        ``report.failed`` (``report.failures`` counts them all). ``on_outage(error)`` is called when an
        outage begins, ``on_outage(None)`` when a re-published task is confirmed. See
        :mod:`sluice._publish_window`.
        """
        window = PublishWindow(
            self,
            on_done,
            ordered=ordered,
            give_up_after=give_up_after,
            keep_failed=keep_failed,
            on_outage=on_outage,
        )
        return await window.run(messages)

    def knows_queue(self, name: str) -> bool:
        """Has the work queue ``name`` been declared (or found) by this publisher already?"""
        return name in self._queues

    async def wait_ready(self) -> None:
        """Until the channel is open again (a robust connection reconnects by itself)."""
        if self._channel is None:
            raise BrokerUnavailable("publisher is not open")
        if isinstance(self._channel, AbstractRobustChannel):
            await self._channel.ready()  # connected, and this channel reopened
        else:
            await self.connection.ready()


async def await_confirm(
    pending: Awaitable[Any], within: float, what: str = "the task", *, timed: bool = True
) -> None:
    """Await a publish on a confirm-mode channel; its failure as a sluice error.

    :class:`PublishTimeout` after ``within`` seconds, :class:`PublishReturned` if unroutable,
    :class:`PublishNacked` if the broker refused it, :class:`BrokerUnavailable` if the connection died.
    ``timed=False``: ``pending`` bounds itself (raises TimeoutError after ``within``), no timer here.
    """
    try:
        if timed:
            async with asyncio.timeout(within):
                await pending
        else:
            await pending
    except TimeoutError:
        raise PublishTimeout(f"no confirm within {within:g}s (broker down or blocked by an alarm?)") from None
    except aiormq.exceptions.PublishError as e:
        raise PublishReturned(f"unroutable: {getattr(e.frame, 'reply_text', None) or e.frame!r}") from None
    except aiormq.exceptions.DeliveryError:
        # a nack frame says nothing more: on a queue it is a full one (overflow reject-publish) or an
        # internal error of the broker
        raise PublishNacked(f"the broker refused {what} (nack: queue full, or a broker error)") from None
    except BROKER_ERRORS as e:
        raise BrokerUnavailable(f"lost the broker before the confirm: {e!r}") from None
