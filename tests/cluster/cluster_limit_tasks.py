"""What ``tests/cluster/test_redis_workers.py``'s ``sluice worker --tasks cluster_limit_tasks`` processes run:
``clusterlim.limited`` (50/s, burst 5: the policy tests' ``pol.limited``, its limit decided on the Redis
Cluster under test) appends "n attempt server-ms" to the list ``key`` on the machine's standalone Redis
(``SLUICE_TEST_RECORD_URL``: the side effects a test counts, apart from the cluster under test)."""

from __future__ import annotations

import functools
import os

import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import RateLimit
from sluice.resilience import RetryPolicy


@functools.cache
def _record_redis(pid: int) -> aioredis.Redis:
    """The records' client of process ``pid`` (a forked child makes its own), made on first use."""
    return aioredis.Redis.from_url(os.environ["SLUICE_TEST_RECORD_URL"])


class Rec(BaseModel):
    key: str
    n: int = 0


@task("clusterlim.limited", rate_limit=RateLimit(50, 1.0, burst=5), retry=RetryPolicy(max_attempts=2))
async def limited(p: Rec, ctx: TaskContext) -> None:
    r = _record_redis(os.getpid())
    sec, usec = await r.time()
    await r.rpush(p.key, f"{p.n} {ctx.attempt} {sec * 1000 + usec // 1000}")
