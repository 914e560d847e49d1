"""Tasks the compose tests mount into the worker containers: each run is counted in the stack's Redis."""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

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
    seconds: float = Field(0.0, ge=0, le=10)
    ids: str | None = None  # also HINCRBY ids <task id> 1 (the scheduler test: one run per occurrence id)


@task("compose.mark")
async def mark(p: Mark, ctx: TaskContext) -> None:
    """Wait ``seconds``, then HINCRBY key n 1: a task run twice shows as a 2, one never run is missing."""
    if p.seconds:
        await asyncio.sleep(p.seconds)
    await _redis().hincrby(p.key, str(p.n), 1)
    if p.ids:
        await _redis().hincrby(p.ids, ctx.task_id, 1)
