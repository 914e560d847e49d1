"""What the process tests load with ``--tasks sched_tasks``: the schedule ``tick`` (every second, catch-up
all) and its task ``sched.record``, which a real worker runs: it appends its task id (``tick:<occurrence>``)
to the Redis list ``<prefix>:seen``, so a test sees what the worker saw."""

from __future__ import annotations

import os

from sluice import TaskContext, task
from sluice.schedules import every
from support.task_redis import task_redis


@task("sched.record")
async def record(ctx: TaskContext) -> None:
    await task_redis().rpush(f"{os.environ['SLUICE_PREFIX']}:seen", ctx.task_id)


tick = every("1s", name="tick", task="sched.record", catch_up="all", payload={"from": "code"})
