"""Tasks for the policy tests: each run is recorded in Redis (server time), so the fleet's behaviour is measured."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import Breaker, Concurrency, Idempotency, RateLimit
from sluice.resilience import BreakerPolicy, ExponentialBackoff, RetryPolicy
from support.task_redis import task_redis as _redis


class Rec(BaseModel):
    key: str
    n: int = 0


async def _record(p: Rec, ctx: TaskContext) -> None:
    """Append "n attempt server-time-ms" to the list ``key``."""
    sec, usec = await _redis().time()
    ms = sec * 1000 + usec // 1000
    await _redis().rpush(p.key, f"{p.n} {ctx.attempt} {ms}")


@task("pol.limited", rate_limit=RateLimit(50, 1.0, burst=5), retry=RetryPolicy(max_attempts=2))
async def limited(p: Rec, ctx: TaskContext) -> None:
    await _record(p, ctx)


@task("pol.fast")
async def fast(p: Rec, ctx: TaskContext) -> None:
    await _record(p, ctx)


@task(
    "pol.flaky",
    retry=RetryPolicy(max_attempts=4, backoff=ExponentialBackoff(initial=1.0, multiplier=2.0, jitter="none")),
)
async def flaky(p: Rec, ctx: TaskContext) -> None:
    await _record(p, ctx)
    raise ConnectionError(f"flaky #{p.n} failed on attempt {ctx.attempt}")


@task(
    "pol.guarded",
    breaker=Breaker(
        os.environ.get("POL_BREAKER", "dep"),
        BreakerPolicy(minimum_calls=4, failure_rate=0.5, window=30.0, open_for=3.0, half_open_permits=2),
    ),
)
async def guarded(p: Rec, ctx: TaskContext) -> None:
    """Fails while the Redis key ``{key}:down`` exists."""
    await _record(p, ctx)
    if await _redis().exists(p.key + ":down"):
        raise ConnectionError("the dependency is down")


@task("pol.once", idempotency=Idempotency(fields=("key", "n")))
async def once(p: Rec, ctx: TaskContext) -> None:
    await _record(p, ctx)


@task("pol.block")
async def block(p: Rec, ctx: TaskContext) -> None:
    """Holds its delivery (and so every later ack of the channel) until redelivered."""
    if not ctx.redelivered:
        await asyncio.sleep(120)


@task(
    "pol.slow", timeout=0.5, retry=RetryPolicy(max_attempts=2, backoff=ExponentialBackoff(0.0, jitter="none"))
)
async def slow(p: Rec, ctx: TaskContext) -> None:
    await _record(p, ctx)
    await asyncio.sleep(5)


@task("pol.poison")
def poison(p: Rec) -> None:
    os._exit(1)


@task("pol.failing")
async def failing(p: Rec, ctx: TaskContext) -> None:
    """Fails while the Redis key ``{key}:down`` exists (no retry policy: straight to the DLQ)."""
    await _record(p, ctx)
    if await _redis().exists(p.key + ":down"):
        raise ValueError(f"task {p.n} cannot run yet")


@task("pol.pair", concurrency=Concurrency(2, lease=10.0))
async def pair(p: Rec, ctx: TaskContext) -> None:
    """Records its start, holds the slot 0.3 s, records its end (as n + 1000)."""
    await _record(p, ctx)
    await asyncio.sleep(0.3)
    await _record(Rec(key=p.key, n=p.n + 1000), ctx)
