"""Fixtures for the throttling tests: the fake upstream (tests/support/fake_upstream.py) on a free port,
and a key prefix of the test's own on the shared Redis (its keys deleted after)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from sluice.resilience import KeySpace
from support.fake_upstream import FakeUpstream, running_upstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """An upstream allowing 20 requests per second per API key, answering 429 + Retry-After beyond."""
    with running_upstream(FakeUpstream(limit=20, period=1.0)) as served:
        yield served


@pytest.fixture
async def keys(redis: Redis, unique: str) -> AsyncIterator[KeySpace]:
    space = KeySpace(f"sluicetest:{unique}")
    yield space
    found = [k async for k in redis.scan_iter(match=f"{space.prefix}:*", count=1000)]
    if found:
        await redis.delete(*found)
