"""Tasks for the fair-share tests: each sleeps ``seconds`` (the task time), then counts its run in Redis:
``{record}:runs`` (a hash: task id -> runs, so a task run twice shows 2) and ``{record}:done:{tenant}``;
a run of tenant B also appends "finish-time A-done-then" to the list ``{record}:b``."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import Fair, RateLimit
from sluice.resilience import FixedBackoff, RetryPolicy
from support.task_redis import task_redis

SHARDS = 8


class Work(BaseModel):
    record: str
    tenant: str
    seconds: float = 0.02
    fail: bool = False  # raise on every attempt (the retry and the DLQ tests)


async def _work(p: Work, ctx: TaskContext) -> None:
    await asyncio.sleep(p.seconds)
    r = task_redis()
    if p.fail:
        await r.rpush(f"{p.record}:attempts", str(ctx.attempt))
        raise RuntimeError(f"failing on purpose, attempt {ctx.attempt}")
    async with r.pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{p.record}:runs", ctx.task_id, 1)
        pipe.incr(f"{p.record}:done:{p.tenant}")
        pipe.get(f"{p.record}:done:A")
        _, _, a_done = await pipe.execute()
    if p.tenant == "B":
        await r.rpush(f"{p.record}:b", f"{time.time()} {int(a_done or 0)}")


# fair share by the payload's tenant over 8 sub-queues of queue "fairq"
@task("fair.work", queue="fairq", fair=Fair("tenant", shards=SHARDS))
async def fair_work(p: Work, ctx: TaskContext) -> None:
    await _work(p, ctx)


# the same task without fair: one FIFO queue
@task("plain.work", queue="plainq")
async def plain_work(p: Work, ctx: TaskContext) -> None:
    await _work(p, ctx)


# fair=True: the tenant is the rate limit's key; a failure is retried once after 1 s, then dead-lettered
@task(
    "fair.retried",
    queue="fairq",
    rate_limit=RateLimit(10_000, 1.0, key="tenant"),
    fair=True,
    retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(1.0)),
)
async def fair_retried(p: Work, ctx: TaskContext) -> None:
    await _work(p, ctx)
