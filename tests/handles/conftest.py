"""Fixtures for the task-handles tests: a key prefix of the test's own (its keys deleted after), a
TaskHandles and a Tracker on it, and ``throwaway_redis`` (tests/resilience): a private redis-server the
test may kill (never the shared one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from resilience.conftest import throwaway_redis
from sluice.handles import TaskHandles, Tracker

__all__ = ["throwaway_redis"]  # a redis-server of the test's own, which it may kill and restart


@pytest.fixture
async def prefix(redis: Redis, unique: str) -> AsyncIterator[str]:
    """``sluicetest:<unique>``; every key under it is deleted after the test."""
    name = f"sluicetest:{unique}"
    yield name
    found = [k async for k in redis.scan_iter(match=f"{name}:*", count=1000)]
    if found:
        await redis.delete(*found)


@pytest.fixture
async def handles(redis: Redis, prefix: str) -> AsyncIterator[TaskHandles]:
    async with TaskHandles(redis, prefix, fallback=5.0) as h:
        yield h


@pytest.fixture
async def tracker(redis: Redis, prefix: str) -> AsyncIterator[Tracker]:
    async with Tracker(redis, prefix, worker="testhost:1") as t:
        yield t
