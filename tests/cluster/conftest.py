"""Fixtures for the cluster tests: the loopback RabbitMQ and Redis clusters (booted once per run, see
tests/support/clusters.py), a RedisCluster client, and a key prefix of the test's own whose keys are
deleted after it (on every master)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import RedisCluster

from support.clusters import RabbitCluster, RedisClusterNodes, rabbit_cluster, redis_cluster

__all__ = ["RabbitCluster", "RedisClusterNodes", "rabbit_cluster", "redis_cluster"]


@pytest.fixture
async def rc(redis_cluster: RedisClusterNodes) -> AsyncIterator[RedisCluster]:
    """A RedisCluster client on the loopback cluster (it learns the nodes from 7001)."""
    client = RedisCluster.from_url(redis_cluster.url, socket_timeout=5.0, socket_connect_timeout=2.0)
    await client.initialize()  # the slot map, for tests that ask which node holds a key
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def cprefix(rc: RedisCluster) -> AsyncIterator[str]:
    """``gt<hex>``; every key under it is deleted after the test, on whichever node holds it."""
    name = "gt" + uuid.uuid4().hex[:10]
    yield name
    found = [k async for k in rc.scan_iter(match=f"{name}:*", count=1000)]
    for key in found:
        await rc.delete(key)
