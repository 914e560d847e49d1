"""Where a primitive keeps its state: a Redis client or a :class:`~.memory.MemoryBackend`.

Every primitive takes either as its first argument. The choice is made once, when the primitive is
built (:func:`runner_for`): on Redis it holds a :class:`~._scripts.ScriptRunner` exactly as before the
seam existed, so a decision costs no extra await, call or allocation.
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from ._scripts import Runner, ScriptRunner
from .clock import SYSTEM, Clock
from .memory import MemoryBackend

__all__ = ["Backend", "clock_of", "runner_for"]

#: What the primitives take as their first argument.
Backend = Redis | RedisCluster | MemoryBackend


def runner_for(backend: Backend, *, timeout: float) -> Runner:
    """The runner of ``backend``'s script calls, every call bounded by ``timeout`` seconds."""
    if isinstance(backend, MemoryBackend):
        return backend.runner(timeout)
    return ScriptRunner(backend, timeout=timeout)


def clock_of(backend: Backend) -> Clock:
    """The clock a primitive uses by default: the in-memory backend's, else the real one."""
    return backend.clock if isinstance(backend, MemoryBackend) else SYSTEM
