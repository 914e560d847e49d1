"""What the cluster tests' ``sluice worker --tasks cluster_tasks`` processes run: ``cluster.record`` adds its
task id to the Redis set ``<prefix>:seen``, counts its runs in ``<prefix>:runs`` and per worker process in the
hash ``<prefix>:by_pid`` (the machine's standalone Redis: the side effects a test counts, apart from the broker
cluster under test)."""

from __future__ import annotations

import os

from sluice import TaskContext, task
from support.task_redis import task_redis


@task("cluster.record")
async def record(ctx: TaskContext) -> None:
    prefix = os.environ["SLUICE_PREFIX"]
    await task_redis().sadd(f"{prefix}:seen", ctx.task_id)
    await task_redis().incr(f"{prefix}:runs")
    await task_redis().hincrby(f"{prefix}:by_pid", str(os.getpid()), 1)
