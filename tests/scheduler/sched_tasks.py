"""What the process tests load with ``--tasks sched_tasks``: the schedule ``tick`` (every second, catch-up
all) and its task ``sched.record``, which a real worker runs: it appends its task id (``tick:<occurrence>``)
to the Redis list ``<prefix>:seen``, so a test sees what the worker saw, and ``<occurrence>:<created ms>`` (when
the scheduler built the fire, just before its publish) to ``<prefix>:fired``."""

from __future__ import annotations

import os

from sluice import TaskContext, task
from sluice.schedules import every
from support.task_redis import task_redis


@task("sched.record")
async def record(ctx: TaskContext) -> None:
    prefix = os.environ["SLUICE_PREFIX"]
    occurrence = ctx.task_id.rpartition(":")[2]
    await task_redis().rpush(f"{prefix}:fired", f"{occurrence}:{ctx.message.created_at_ms}")
    await task_redis().rpush(f"{prefix}:seen", ctx.task_id)


tick = every("1s", name="tick", task="sched.record", catch_up="all", payload={"from": "code"})
