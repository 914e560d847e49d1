"""The Redis client of the test task modules: one per worker process, made on first use (never at
import), from ``SLUICE_REDIS_URL``. (tests/compose/compose_tasks.py keeps its own: it is mounted alone
into containers.)"""

from __future__ import annotations

import os

import redis.asyncio as aioredis

__all__ = ["task_redis"]

_clients: dict[int, aioredis.Redis] = {}


def task_redis() -> aioredis.Redis:
    """This process's client (a forked child makes its own)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = aioredis.Redis.from_url(os.environ["SLUICE_REDIS_URL"])
    return _clients[pid]
