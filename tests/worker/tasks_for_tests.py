"""Tasks for the worker's process tests: every run is counted in Redis, so "exactly once" is measured.

Keys (``p.key`` is unique per test): ``{key}:starts`` / ``{key}:runs`` hashes n → count of runs started /
finished, ``{key}:running`` the runs in progress now, ``{key}:max`` the most seen at once.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from pydantic import BaseModel

from sluice.tasks import TaskContext, task

_clients: dict[int, aioredis.Redis] = {}

# INCR the running counter and raise the high-water mark, atomically
_ENTER = """
local v = redis.call('INCR', KEYS[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end
return v
"""


def _redis() -> aioredis.Redis:
    pid = os.getpid()  # one client per worker process, made on first use (never at import)
    if pid not in _clients:
        _clients[pid] = aioredis.Redis.from_url(os.environ["SLUICE_REDIS_URL"])
    return _clients[pid]


class Record(BaseModel):
    key: str
    n: int
    seconds: float = 0.0


@task("wt.record")
async def record(p: Record, ctx: TaskContext) -> None:
    """Count the start, hold a "running" slot for ``seconds``, count the finish."""
    r = _redis()
    await r.hincrby(f"{p.key}:starts", str(p.n), 1)
    await r.eval(_ENTER, 2, f"{p.key}:running", f"{p.key}:max")  # type: ignore[misc]
    try:
        if p.seconds:
            await asyncio.sleep(p.seconds)
    finally:
        await r.decr(f"{p.key}:running")
    await r.hincrby(f"{p.key}:runs", str(p.n), 1)
