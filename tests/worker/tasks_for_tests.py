"""Tasks for the worker's process tests: every run is counted in Redis, so "exactly once" is measured.

Keys (``p.key`` is unique per test): ``{key}:starts`` / ``{key}:runs`` hashes n → count of runs started /
finished, ``{key}:running`` the runs in progress now, ``{key}:max`` the most seen at once.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from sluice.tasks import TaskContext, task
from support.task_redis import task_redis as _redis  # dying_tasks imports it from here

# INCR the running counter and raise the high-water mark, atomically
_ENTER = """
local v = redis.call('INCR', KEYS[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end
return v
"""


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
