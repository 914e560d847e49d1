"""The tasks of the scenario run both through sluice.testing and through a real ``sluice worker --burst``
(test_against_a_real_worker.py). Each run is recorded as ``"task id ok|failed"``: in :data:`local`
when a test set it (in-process, under the harness), else in Redis (a worker process), in the list
``{SLUICE_PREFIX}:runs``.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.resilience import FixedBackoff, RetryPolicy
from support.task_redis import task_redis

#: where runs go in-process (a test sets it); None: to Redis
local: list[str] | None = None


class N(BaseModel):
    n: int = 0


async def _record(ctx: TaskContext, ok: bool) -> None:
    line = f"{ctx.message.task} {ctx.task_id} {'ok' if ok else 'failed'}"
    if local is not None:
        local.append(line)
    else:
        await task_redis().rpush(f"{os.environ['SLUICE_PREFIX']}:runs", line)


@task("cmp.ok")
async def ok(p: N, ctx: TaskContext) -> None:
    await _record(ctx, True)


@task("cmp.flaky", retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(1)))
async def flaky(p: N, ctx: TaskContext) -> None:
    await _record(ctx, ctx.attempt >= 2)
    if ctx.attempt < 2:
        raise ConnectionError("first attempt fails")


@task("cmp.doomed", retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(1)))
async def doomed(p: N, ctx: TaskContext) -> None:
    await _record(ctx, False)
    raise ValueError("never works")


@task("cmp.limited", rate_limit="2/s")
async def limited(p: N, ctx: TaskContext) -> None:
    await _record(ctx, True)


@task("cmp.once", idempotency=True)
async def once(p: N, ctx: TaskContext) -> None:
    await _record(ctx, True)
