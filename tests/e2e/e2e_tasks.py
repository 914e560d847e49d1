"""Tasks for the end-to-end tests: each run is counted in Redis, so "exactly once" is measured."""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import TaskContext, task

_clients: dict[int, aioredis.Redis] = {}


def _redis() -> aioredis.Redis:
    # one client per worker process, made on first use (never at import)
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = aioredis.Redis.from_url(os.environ["SLUICE_REDIS_URL"])
    return _clients[pid]


class Mark(BaseModel):
    key: str
    n: int


@task("e2e.mark")
async def mark(p: Mark, ctx: TaskContext) -> None:
    """HINCRBY key n 1: a second run of the same task shows as a 2."""
    await _redis().hincrby(p.key, str(p.n), 1)
    await _redis().hset(p.key + ":ids", str(p.n), ctx.task_id)
