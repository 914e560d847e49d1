"""Connecting to RabbitMQ with a deadline and a clear error, to one node or to any node of a cluster.

``SLUICE_AMQP_URL`` may name several nodes, separated by commas. Every connection tries them in an
order shuffled for it (so a fleet of processes spreads over the nodes) and takes the first that
answers; a robust connection that loses its node reconnects to the next one in that order, round
and round, so it lands on a surviving node instead of waiting for the dead one to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.connection import make_url
from yarl import URL

from sluice.errors import BrokerUnavailable, ConfigError
from sluice.settings import Settings, mask_url

__all__ = ["BROKER_ERRORS", "NodeRotatingConnection", "broker_order", "connect", "connect_plain"]

_T = TypeVar("_T")

# what a lost or refused broker looks like from aio-pika/aiormq
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, refused, reset
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    RuntimeError,  # aiormq raises RuntimeError("Writer is None") on a dead connection
)

RECONNECT_INTERVAL = 1.0  # seconds between two reconnect attempts of a robust connection


def broker_order(urls: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """``urls`` in the order one connection tries them: shuffled (by ``rng``, else the module's
    generator), so that the processes of a fleet spread over a cluster's nodes."""
    order = list(urls)
    if len(order) > 1:
        (rng or random).shuffle(order)  # spreading load, not a secret
    return order


class NodeRotatingConnection(aio_pika.RobustConnection):
    """A robust connection over several nodes: each reconnect attempt goes to the next URL.

    aio-pika's robust connection reconnects to its one URL; this one moves ``url`` on before every
    attempt but the first (aio-pika clears ``transport`` at the start of each attempt: that is the
    hook), so a lost node is left for the next one in the list, and a list of dead nodes is tried
    round and round until one answers. Channels, queues and consumers are restored on the new node as
    aio-pika restores them on the old one.
    """

    def __init__(self, urls: Sequence[URL], **kwargs: Any) -> None:
        if not urls:
            raise ConfigError("no broker URL")
        self._urls = tuple(urls)
        self._next = 0
        self._attempts = 0
        self._transport: Any = None
        super().__init__(self._urls[0], **kwargs)

    @property
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and not getattr(self, "_close_called", False):
            self._advance()
        self._transport = value

    def _advance(self) -> None:
        """Called as an attempt starts (and once by ``__init__``, harmlessly): every attempt after the
        first one goes to the next node."""
        self._attempts += 1
        if self._attempts > 2:  # 1: __init__, 2: the first connect attempt
            self._next = (self._next + 1) % len(self._urls)
            self.url = self._urls[self._next]

    @property
    def node_url(self) -> URL:
        """The URL of the node this connection is on (or trying now)."""
        return self.url


async def connect(
    settings: Settings, name: str, *, rng: random.Random | None = None
) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself, to another node if it has several), or
    :class:`BrokerUnavailable` when no node answers, each within the deadline.

    On failure the connection object is closed: its reconnect task would otherwise go on trying (it
    swallows the cancellation of a connect attempt in progress, so ``asyncio.run`` never returned
    when a broker accepted TCP but did not answer within the deadline).
    """
    order = broker_order(settings.amqp_urls, rng)
    urls = [make_url(u, reconnect_interval=RECONNECT_INTERVAL) for u in order]

    async def attempt(i: int) -> AbstractRobustConnection:
        conn = NodeRotatingConnection(
            urls[i:] + urls[:i],
            client_properties={"connection_name": name},
            reconnect_interval=RECONNECT_INTERVAL,
        )  # what aio_pika.connect_robust builds, kept so that a failed connect can be closed
        try:
            await _within_deadline(settings, order[i], conn.connect())
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        return conn

    return await _first_answer(order, attempt)


async def connect_plain(
    settings: Settings, name: str, *, rng: random.Random | None = None
) -> AbstractConnection:
    """A plain connection (no automatic reconnect), for a caller that supervises reconnection itself:
    each call tries the nodes in a fresh shuffled order, so a reconnect lands on a node that answers.

    Same deadline and errors as :func:`connect`.
    """
    order = broker_order(settings.amqp_urls, rng)

    async def attempt(i: int) -> AbstractConnection:
        return await _within_deadline(
            settings, order[i], aio_pika.connect(order[i], client_properties={"connection_name": name})
        )

    return await _first_answer(order, attempt)


async def _first_answer(order: Sequence[str], attempt: Callable[[int], Awaitable[_T]]) -> _T:
    """The first node of ``order`` that answers; else the error of the only node, or all of them."""
    errors: list[BrokerUnavailable] = []
    for i in range(len(order)):
        try:
            return await attempt(i)
        except BrokerUnavailable as e:
            errors.append(e)
    if len(errors) == 1:
        message = str(errors[0])
    else:
        message = f"no RabbitMQ node answers: {'; '.join(map(str, errors))}"
    raise BrokerUnavailable(message)


async def _within_deadline(settings: Settings, url: str, connecting: Awaitable[_T]) -> _T:
    try:
        async with asyncio.timeout(settings.connect_timeout):
            return await connecting
    except TimeoutError:
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(url)} did not answer within {settings.connect_timeout:g}s"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(f"RabbitMQ at {mask_url(url)} refused the credentials") from None
    except BROKER_ERRORS as e:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {mask_url(url)}: {e}") from None
