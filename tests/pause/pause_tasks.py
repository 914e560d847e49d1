"""Tasks for the consumer-pausing tests (test_pause.py): each records its run in Redis (the list ``record``)
and fails, or answers a throttle, while the test's flag ``down`` is set (the "upstream" is down)."""

from __future__ import annotations

import os

from pydantic import BaseModel

from sluice import Throttled, task
from sluice.policy import Breaker, RateLimit
from sluice.resilience import BreakerPolicy, ExponentialBackoff, RetryPolicy
from support.task_redis import task_redis

# the breaker's open time (the 30 s measurement sets it, the short tests a few seconds); a half-open
# round lasts 1 s, so a delivery refused while the trial runs waits 1 s, not the open time again
OPEN_FOR = float(os.environ.get("PAUSE_OPEN_FOR", "30"))
GUARD = Breaker(
    "pzbrk",
    BreakerPolicy(
        failure_rate=0.5,
        minimum_calls=2,
        window=60,
        open_for=OPEN_FOR,
        half_open_permits=1,
        trial_timeout=1.0,
    ),
)
RETRY = RetryPolicy(max_attempts=10, backoff=ExponentialBackoff(initial=1, cap=2))
FREEZE = float(os.environ.get("PAUSE_FREEZE", "60"))


class Job(BaseModel):
    record: str
    down: str
    n: int = 0
    tenant: str = "a"


async def _run(p: Job, *, throttle: bool = False, may_fail: bool = True) -> None:
    r = task_redis()
    if may_fail and await r.exists(p.down):
        if throttle:
            raise Throttled(retry_after=FREEZE)
        raise RuntimeError("the upstream is down")
    await r.rpush(p.record, str(p.n))


# the guarded queue: one task, behind a breaker that two failures open
@task("pz.guarded", queue="pz", breaker=GUARD, retry=RETRY)
async def guarded(p: Job) -> None:
    await _run(p)


# another queue of the same worker, no policy: it keeps running while pz is paused
@task("pz.free", queue="pzfree")
async def free(p: Job) -> None:
    await _run(p)


# a limit without a per-tenant key: a throttle freezes the task's key, every delivery alike
@task("pz.limited", queue="pzlim", rate_limit="1000/s")
async def limited(p: Job) -> None:
    await _run(p, throttle=True)


# a per-tenant limit: tenant a's throttle freezes pz.tenant:a only; tenant b's tasks still run
@task("pz.tenant", queue="pzten", rate_limit=RateLimit(1000, 1.0, key="tenant"))
async def tenant(p: Job) -> None:
    await _run(p, throttle=True, may_fail=p.tenant == "a")
