"""Producer test fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from producer_helpers import Broker

from sluice.settings import Settings


@pytest.fixture
async def broker(amqp_url: str, unique: str) -> AsyncIterator[Broker]:
    b = Broker(amqp_url, unique)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
def settings(amqp_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, prefix=unique, publish_timeout=5.0, connect_timeout=3.0)
