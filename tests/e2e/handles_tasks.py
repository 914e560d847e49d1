"""Tasks for the task-handle tests (tests/e2e/test_handles_*.py): tracked, with results, failing, slow.

Each handler counts its runs in Redis under the payload's ``key`` (``HINCRBY key runs 1``) on the
client named by ``HANDLES_COUNT_URL`` (the default Redis: it stays up when a test stops the worker's
own Redis), so "was it run?" is measured, not assumed. The slow ones record when they started and
when they saw their cancellation (Redis ``TIME``-free: wall clock of this machine, the test's too).
"""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.policy import RetryBudgetPolicy
from sluice.resilience import ExponentialBackoff, RetryPolicy

_clients: dict[int, aioredis.Redis] = {}
_EIGHT_SECONDS = ExponentialBackoff(initial=8.0, jitter="none")  # the 8 s delay tier, no hop


def _counts() -> aioredis.Redis:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = aioredis.Redis.from_url(os.environ["HANDLES_COUNT_URL"])
    return _clients[pid]


class Job(BaseModel):
    key: str
    n: int = 0
    seconds: float = 0.0


class Sum(BaseModel):
    total: int
    by: str


async def _ran(p: Job) -> None:
    await _counts().hincrby(p.key, "runs", 1)


@task("handles.add", result=True)
async def add(p: Job, ctx: TaskContext) -> Sum:
    """succeeded with a result: the return annotation is the result's schema."""
    await _ran(p)
    return Sum(total=p.n + 1, by=ctx.task_id)


@task("handles.big", result=True)
async def big(p: Job) -> str:
    """A result over the default 64 KiB cap: refused (result_error), the task still succeeded."""
    await _ran(p)
    return "x" * 70_000


@task("handles.mark", track=True)
async def mark(p: Job) -> None:
    """Tracked, no result: counts its runs."""
    await _ran(p)


@task("handles.fail", track=True)
async def fail(p: Job) -> None:
    """failed: no retry policy."""
    await _ran(p)
    raise ValueError(f"job {p.n} fails on purpose")


@task("handles.flaky", track=True, retry=RetryPolicy(max_attempts=3, backoff=_EIGHT_SECONDS))
async def flaky(p: Job) -> None:
    """Fails; retried in 8 s (one delay tier): it reads retrying meanwhile."""
    await _ran(p)
    raise ConnectionError("flaky on purpose")


@task(
    "handles.budget",
    track=True,
    retry=RetryPolicy(max_attempts=3),
    retry_budget=RetryBudgetPolicy(ratio=0.0, min_per_second=0.0),
)
async def budget(p: Job) -> None:
    """dead: its retry is refused by a budget that grants none (retry_budget_exhausted)."""
    await _ran(p)
    raise ConnectionError("down")


@task("handles.limited", track=True, rate_limit="1/30s")
async def limited(p: Job) -> None:
    """One run per 30 s fleet-wide: a second one is deferred (rate_limited)."""
    await _ran(p)


@task("handles.sleep", track=True)
async def sleep(p: Job) -> None:
    """Sleeps ``seconds``; records when it started and when it saw its cancellation."""
    r = _counts()
    await r.hset(p.key, "started", repr(time.time()))
    await _ran(p)
    try:
        await asyncio.sleep(p.seconds)
    except asyncio.CancelledError:
        await r.hset(p.key, "cancelled_at", repr(time.time()))
        raise
    await r.hset(p.key, "finished", "1")


@task("handles.blocking", track=True)
def blocking(p: Job, ctx: TaskContext) -> None:
    """A plain function (thread pool): polls ``ctx.cancelled`` every 50 ms for up to ``seconds``."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(os.environ["HANDLES_COUNT_URL"])
    try:
        r.hset(p.key, "started", repr(time.time()))
        r.hincrby(p.key, "runs", 1)
        deadline = time.monotonic() + p.seconds
        while time.monotonic() < deadline:
            if ctx.cancelled:
                r.hset(p.key, "cancelled_at", repr(time.time()))
                raise RuntimeError("cancelled: stopping")
            time.sleep(0.05)
        r.hset(p.key, "finished", "1")
    finally:
        r.close()


@task("handles.stubborn", result=True)
def stubborn(p: Job) -> int:
    """A plain function that never looks at ``ctx.cancelled``: records its start, then waits for the test
    to set ``go`` on its key (at most ``seconds``) and returns ``n``."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(os.environ["HANDLES_COUNT_URL"])
    try:
        r.hset(p.key, "started", repr(time.time()))
        r.hincrby(p.key, "runs", 1)
        deadline = time.monotonic() + p.seconds
        while not r.hget(p.key, "go") and time.monotonic() < deadline:
            time.sleep(0.02)
        return p.n
    finally:
        r.close()
