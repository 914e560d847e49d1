"""A task for tests/producer/test_publish_restart.py: every run is counted in Redis by task id, so
"every printed id ran" and "how many ran twice" are measured, not assumed."""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import TaskContext, task

_clients: dict[int, aioredis.Redis] = {}


def _redis() -> aioredis.Redis:
    pid = os.getpid()  # one client per worker process, made on first use (never at import)
    if pid not in _clients:
        _clients[pid] = aioredis.Redis.from_url(os.environ["SLUICE_REDIS_URL"])
    return _clients[pid]


class Count(BaseModel):
    key: str
    n: int


@task("restart.count")
async def count(p: Count, ctx: TaskContext) -> None:
    """HINCRBY key task-id 1: a task run twice shows as a 2."""
    await _redis().hincrby(p.key, ctx.task_id, 1)
