"""Tasks for the end-to-end tests: each run is counted in Redis, so "exactly once" is measured."""

from __future__ import annotations

from pydantic import BaseModel

from sluice import TaskContext, task
from support.task_redis import task_redis as _redis


class Mark(BaseModel):
    key: str
    n: int


@task("e2e.mark")
async def mark(p: Mark, ctx: TaskContext) -> None:
    """HINCRBY key n 1: a second run of the same task shows as a 2."""
    await _redis().hincrby(p.key, str(p.n), 1)
    await _redis().hset(p.key + ":ids", str(p.n), ctx.task_id)
