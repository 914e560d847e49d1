"""The producer's link to RabbitMQ: one publisher, opened in the background, and its state.

The HTTP service starts whether or not the broker answers: :meth:`BrokerLink.run` keeps trying to
open the publisher (a robust connection, which then reconnects by itself after a broker restart).
:meth:`BrokerLink.state` tells the request handlers, without waiting, whether a publish can work:
connected, and not blocked by a memory or disk alarm (RabbitMQ's ``connection.blocked`` frame, which
aiormq tracks behind ``Connection.ready()``).

The publisher may create only the queues of ``creatable`` (the configuration: the default queue,
``SLUICE_QUEUES``, the known tasks' queues); a task for any other queue is published only if that
queue already exists, else :class:`~sluice.errors.UnknownQueue`. A request never creates a queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from sluice.errors import BrokerUnavailable
from sluice.fair import FairRoutes
from sluice.publisher import Publisher
from sluice.settings import Settings, mask_url

__all__ = ["BrokerLink", "BrokerState", "PublisherFactory"]

log = logging.getLogger("sluice.producer")

# (settings, the queues it may create) -> an unopened publisher
PublisherFactory = Callable[[Settings, Collection[str]], AbstractAsyncContextManager[Publisher]]

# how long a ready() probe may take before the connection counts as blocked
_BLOCK_PROBE_S = 0.05


@dataclass(frozen=True, slots=True)
class BrokerState:
    ready: bool
    state: str  # "ready", "connecting", "reconnecting", "blocked"
    detail: str
    retry_after: int  # seconds a client should wait before retrying when not ready


def default_factory(settings: Settings, creatable: Collection[str]) -> AbstractAsyncContextManager[Publisher]:
    return Publisher(settings, name="sluice-producer", creatable=creatable)


def fair_factory(fair: FairRoutes) -> PublisherFactory:
    """The default publisher, routing the known fair tasks to their tenants' sub-queues (:mod:`sluice.fair`)."""

    def make(settings: Settings, creatable: Collection[str]) -> AbstractAsyncContextManager[Publisher]:
        return Publisher(settings, name="sluice-producer", creatable=creatable, fair=fair)

    return make


class BrokerLink:
    """Owns the publisher of the HTTP service; run :meth:`run` as a task for the service's lifetime."""

    def __init__(
        self, settings: Settings, creatable: Collection[str], factory: PublisherFactory | None = None
    ) -> None:
        self.settings = settings
        self.creatable = frozenset(creatable)
        self._factory = factory or default_factory
        self._publisher: Publisher | None = None
        self._last_error = "not connected yet"
        self.opened = asyncio.Event()

    async def run(self) -> None:
        """Open the publisher (retrying with backoff until it works), then hold it until cancelled."""
        delay = 0.5
        while True:
            try:
                async with self._factory(self.settings, self.creatable) as publisher:
                    self._publisher = publisher
                    self.opened.set()
                    log.info("producer connected to %s", mask_url(self.settings.amqp_url))
                    try:
                        await asyncio.Event().wait()
                    finally:
                        self._publisher = None
                        self.opened.clear()
            except BrokerUnavailable as e:
                self._last_error = str(e)
                log.warning("%s; retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def publisher(self) -> Publisher:
        """The open publisher, or :class:`BrokerUnavailable`."""
        if self._publisher is None:
            raise BrokerUnavailable(f"not connected to RabbitMQ: {self._last_error}")
        return self._publisher

    async def state(self) -> BrokerState:
        pub = self._publisher
        if pub is None:
            return BrokerState(False, "connecting", f"not connected to RabbitMQ: {self._last_error}", 2)
        conn = pub.connection
        transport = conn.transport
        if (
            conn.is_closed
            or transport is None
            or not conn.connected.is_set()
            or not transport.connection.is_opened
        ):
            return BrokerState(False, "reconnecting", "lost the RabbitMQ connection; reconnecting", 2)
        try:
            async with asyncio.timeout(_BLOCK_PROBE_S):
                await transport.ready()
        except TimeoutError:
            return BrokerState(False, "blocked", "RabbitMQ is blocking publishers (memory or disk alarm)", 5)
        return BrokerState(True, "ready", "connected", 0)
