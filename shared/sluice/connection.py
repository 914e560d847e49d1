"""Connecting to RabbitMQ with a deadline and a clear error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.connection import make_url

from sluice.errors import BrokerUnavailable
from sluice.settings import Settings, mask_url

__all__ = ["BROKER_ERRORS", "connect", "connect_plain"]

_T = TypeVar("_T")

# what a lost or refused broker looks like from aio-pika/aiormq
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, refused, reset
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    RuntimeError,  # aiormq raises RuntimeError("Writer is None") on a dead connection
)


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself), or :class:`BrokerUnavailable` within the deadline.

    On failure the connection object is closed: its reconnect task would otherwise go on trying (it
    swallows the cancellation of a connect attempt in progress, so ``asyncio.run`` never returned
    when a broker accepted TCP but did not answer within the deadline).
    """
    conn = aio_pika.RobustConnection(
        make_url(settings.amqp_url, reconnect_interval=1.0),
        client_properties={"connection_name": name},
        reconnect_interval=1.0,
    )  # what aio_pika.connect_robust builds, kept so that a failed connect can be closed
    try:
        await _within_deadline(settings, conn.connect())
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    return conn


async def connect_plain(settings: Settings, name: str) -> AbstractConnection:
    """A plain connection (no automatic reconnect), for a caller that supervises reconnection itself.

    Same deadline and errors as :func:`connect`.
    """
    return await _within_deadline(
        settings, aio_pika.connect(settings.amqp_url, client_properties={"connection_name": name})
    )


async def _within_deadline(settings: Settings, connecting: Awaitable[_T]) -> _T:
    try:
        async with asyncio.timeout(settings.connect_timeout):
            return await connecting
    except TimeoutError:
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(settings.amqp_url)} did not answer within {settings.connect_timeout:g}s"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(settings.amqp_url)} refused the credentials"
        ) from None
    except BROKER_ERRORS as e:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {mask_url(settings.amqp_url)}: {e}") from None
