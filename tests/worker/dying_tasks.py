"""Tasks whose handlers die in every way a handler can, and one healthy task that counts its runs.

Each way of dying exists as ``die.<way>.<async|sync>`` (no policy: the plain path) and the same name with
``.policy`` (``timeout="10s"``: the policy gate's path). Runs are counted in Redis under the payload's ``key``:
``{key}:ok`` (a hash n -> runs of ``die.ok``) and ``{key}:tries`` (a hash task name -> calls).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import redis
from pydantic import BaseModel
from tasks_for_tests import _redis  # one asyncio client per worker process

from sluice.resilience import ExponentialBackoff, RetryPolicy
from sluice.tasks import Task, TaskContext, task


def _sync_redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["SLUICE_REDIS_URL"])


class Hit(BaseModel):
    key: str
    n: int = 0


class Custom(BaseException):
    """A BaseException subclass that is neither an Exception nor one of Python's own."""


# what each way of dying raises
WAYS: dict[str, Callable[[], BaseException]] = {
    "cancel": lambda: asyncio.CancelledError("leaked by a client library"),
    "custom": lambda: Custom("a BaseException subclass"),
    "sysexit": lambda: SystemExit(3),
    "kbint": lambda: KeyboardInterrupt(),
    "genexit": lambda: GeneratorExit("a generator's exit"),
}


@task("die.ok")
async def ok(p: Hit) -> None:
    await _redis().hincrby(f"{p.key}:ok", str(p.n), 1)


def _async_dier(way: str) -> Callable[..., Any]:
    async def handler(p: Hit, ctx: TaskContext) -> None:
        await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
        raise WAYS[way]()

    return handler


def _sync_dier(way: str) -> Callable[..., Any]:
    def handler(p: Hit, ctx: TaskContext) -> None:  # runs in the worker's thread pool
        with _sync_redis() as r:
            r.hincrby(f"{p.key}:tries", ctx.message.task, 1)
        raise WAYS[way]()

    return handler


def _declare() -> dict[str, Task]:
    made: dict[str, Task] = {}
    for way in WAYS:
        for kind, make in (("async", _async_dier), ("sync", _sync_dier)):
            if way == "cancel" and kind == "sync":
                continue  # a CancelledError is an asyncio matter
            base = f"die.{way}.{kind}"
            made[base] = task(base)(make(way))
            made[base + ".policy"] = task(base + ".policy", timeout="10s")(make(way))
    return made


globals().update({f"_t{i}": t for i, t in enumerate(_declare().values())})  # top-level Task objects


def _raise_genexit() -> None:
    raise GeneratorExit("from a future the handler awaited")


async def _awaits_genexit(p: Hit, ctx: TaskContext) -> None:
    """Awaits a future that fails with GeneratorExit: asyncio throws it in, closing the awaiting coroutines."""
    await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
    await asyncio.get_running_loop().run_in_executor(None, _raise_genexit)


genexit_awaited = task("die.genexit.awaited")(_awaits_genexit)
genexit_awaited_policy = task("die.genexit.awaited.policy", timeout="10s")(_awaits_genexit)


@task(
    "die.custom.async.retry",
    timeout="10s",
    retry=RetryPolicy(
        max_attempts=2, retry_on=(Custom,), backoff=ExponentialBackoff(initial=0.0, jitter="none")
    ),
)
async def custom_retried(p: Hit, ctx: TaskContext) -> None:
    """Raises a BaseException its retry policy names: retried once, then dead-lettered."""
    await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
    raise Custom("again")


@task(
    "die.cancel.async.retry",
    timeout="10s",
    retry=RetryPolicy(max_attempts=2, backoff=ExponentialBackoff(initial=0.0, jitter="none")),
)
async def cancel_retried(p: Hit, ctx: TaskContext) -> None:
    """Raises CancelledError: never retried (``RetryPolicy`` never retries a cancellation), dead-lettered."""
    await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
    raise asyncio.CancelledError("leaked again")


@task("die.hang.async", timeout=0.3)
async def hang(p: Hit, ctx: TaskContext) -> None:
    """Never returns: its timeout cancels it."""
    await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
    await asyncio.sleep(3600)


@task("die.hang.stubborn", timeout=0.3)
async def stubborn(p: Hit, ctx: TaskContext) -> None:
    """Never returns and swallows the timeout's cancellation: it cannot be stopped (until redelivered)."""
    await _redis().hincrby(f"{p.key}:tries", ctx.message.task, 1)
    if ctx.redelivered:
        return
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if await _redis().exists(f"{p.key}:release"):
                return


@task("die.hang.sync")
def hang_sync(p: Hit, ctx: TaskContext) -> None:
    """A plain function that blocks its thread until the Redis key ``{key}:release`` exists."""
    with _sync_redis() as r:
        r.hincrby(f"{p.key}:tries", ctx.message.task, 1)
        if ctx.redelivered:
            return
        while not r.exists(f"{p.key}:release"):
            time.sleep(0.05)
