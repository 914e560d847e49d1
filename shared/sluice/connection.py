"""Connecting to RabbitMQ with a deadline and a clear error."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection

from sluice.errors import BrokerUnavailable
from sluice.settings import Settings, mask_url

__all__ = ["BROKER_ERRORS", "connect"]

# what a lost or refused broker looks like from aio-pika/aiormq
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, refused, reset
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    RuntimeError,  # aiormq raises RuntimeError("Writer is None") on a dead connection
)


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself), or :class:`BrokerUnavailable` within the deadline."""
    try:
        async with asyncio.timeout(settings.connect_timeout):
            return await aio_pika.connect_robust(
                settings.amqp_url,
                client_properties={"connection_name": name},
                reconnect_interval=1.0,
            )
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
