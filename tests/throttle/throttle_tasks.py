"""Tasks for the fleet throttling tests: each calls the fake upstream (``UPSTREAM_URL``, tests/support/
fake_upstream.py) with its API key and records every answer in Redis as "n attempt status time" (the
list ``record``; time: the wall clock's seconds at the answer), then lets ``raise_for_throttle`` turn a
429 into ``sluice.Throttled``."""

from __future__ import annotations

import os
import time

import httpx
from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import RateLimit
from sluice.resilience import RetryPolicy
from sluice.throttle import raise_for_throttle
from support.task_redis import task_redis

_clients: dict[int, httpx.AsyncClient] = {}


class Call(BaseModel):
    record: str
    n: int = 0
    key: str = "k1"
    mode: str | None = None  # how the upstream writes its 429 (X-Fake-Mode)


def _client() -> httpx.AsyncClient:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = httpx.AsyncClient(base_url=os.environ["UPSTREAM_URL"], timeout=10)
    return _clients[pid]


async def _call(p: Call, ctx: TaskContext) -> None:
    headers = {"X-API-Key": p.key, **({"X-Fake-Mode": p.mode} if p.mode else {})}
    answer = await _client().get("/v1/thing", headers=headers)
    await task_redis().rpush(p.record, f"{p.n} {ctx.attempt} {answer.status_code} {time.time():.3f}")
    raise_for_throttle(answer)
    answer.raise_for_status()


# limited at run time (sluice limits set); a retry policy, so that a 429 taken for a failure would show
# as attempt 2
@task("up.call", retry=RetryPolicy(max_attempts=5))
async def call(p: Call, ctx: TaskContext) -> None:
    await _call(p, ctx)


# one limit per API key: each key's throttle freezes that key only
@task("up.keyed", rate_limit=RateLimit(1000, 1.0, key="key"), retry=RetryPolicy(max_attempts=5))
async def keyed(p: Call, ctx: TaskContext) -> None:
    await _call(p, ctx)
