"""The one place a sluice process builds its Redis client from its settings.

``SLUICE_REDIS_URL`` names a standalone server, or, with ``SLUICE_REDIS_CLUSTER=true``, any node of a
Redis Cluster: the client is then a :class:`redis.asyncio.RedisCluster`, which learns the other nodes
and the slot map from that one and follows MOVED/ASK redirections and fail-overs by itself. Every
key of one sluice decision shares a hash tag (``sluice.resilience.keys``), so each script call goes
to one node.

    redis = redis_client(settings, socket_timeout=2.0, socket_connect_timeout=1.0)

The caller's timeouts and pool size are passed through to either client (for a cluster client,
``max_connections`` is per node).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

from sluice.settings import Settings

__all__ = ["AnyRedis", "is_cluster", "redis_client"]

#: What :func:`redis_client` returns.
AnyRedis = Redis | RedisCluster


def redis_client(
    settings: Settings,
    *,
    socket_timeout: float | None = None,
    socket_connect_timeout: float | None = None,
    max_connections: int | None = None,
    **options: Any,
) -> AnyRedis:
    """A client for ``settings.redis_url``: a :class:`RedisCluster` when ``settings.redis_cluster``.

    Nothing connects here: a standalone client connects on its first command, a cluster client on
    its first command too (it reads the slot map then). ``options`` go to ``from_url`` as they are.
    """
    kwargs: dict[str, Any] = dict(options)
    if socket_timeout is not None:
        kwargs["socket_timeout"] = socket_timeout
    if socket_connect_timeout is not None:
        kwargs["socket_connect_timeout"] = socket_connect_timeout
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **kwargs)
    return Redis.from_url(settings.redis_url, **kwargs)


def is_cluster(redis: object) -> bool:
    """Is ``redis`` a Redis Cluster client (each call's keys must then share one slot)?"""
    return isinstance(redis, RedisCluster)
