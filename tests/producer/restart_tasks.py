"""A task for tests/producer/test_publish_restart.py: every run is counted in Redis by task id, so
"every printed id ran" and "how many ran twice" are measured, not assumed."""

from __future__ import annotations

from pydantic import BaseModel

from sluice import TaskContext, task
from support.task_redis import task_redis as _redis


class Count(BaseModel):
    key: str
    n: int


@task("restart.count")
async def count(p: Count, ctx: TaskContext) -> None:
    """HINCRBY key task-id 1: a task run twice shows as a 2."""
    await _redis().hincrby(p.key, ctx.task_id, 1)
