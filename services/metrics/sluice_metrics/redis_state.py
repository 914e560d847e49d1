"""Breaker states, run-time rate-limit overrides, schedules and the task handles' fleet-wide counts, read
through the library (no key layout here).

Breakers: :func:`sluice.resilience.breaker_states` (at most ``max_keys`` of them). Limits:
:meth:`sluice.limits.LimitStore.all` (what ``sluice limits set`` wrote). Schedules:
:meth:`sluice.schedules.ScheduleStore.entries` (at most ``max_keys``, each as ``sluice schedule ls --json``
shows it) and the scheduler lease's holder and term (``None``: no scheduler leads). Task handles:
:meth:`sluice.handles.TaskHandles.counts` (cancels and batch cancels recorded, unique duplicates refused,
by every door: CLI, HTTP, Python). Freezes: :meth:`sluice.resilience.Freezes.frozen` (the keys an
upstream's throttle froze, at most ``max_keys``). Adaptive rates:
:func:`sluice.resilience.adaptive.adaptive_rates` (each adaptive limit a throttle moved below its declared
rate, at most ``max_keys``; one at its declared rate is not listed). A read never takes longer than
``timeout``; an unreachable Redis gives ``redis_up=False`` and the previous values are not kept (shown as
unknown).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from sluice.handles import TaskHandles, TrackingUnavailable
from sluice.limits import LimitStore
from sluice.redis_client import AnyRedis
from sluice.resilience import BackendUnavailable, Freezes, KeySpace, breaker_states
from sluice.resilience.adaptive import adaptive_rates
from sluice.schedules import ScheduleError, ScheduleStore, row

__all__ = ["RedisSnapshot", "RedisStateSource"]


@dataclass(frozen=True, slots=True)
class RedisSnapshot:
    redis_up: bool
    breakers: dict[str, str] = field(default_factory=dict)  # name -> closed | open | half_open
    limits: dict[str, dict[str, object]] = field(default_factory=dict)  # task -> {"rate", "burst"}
    schedules: tuple[dict[str, Any], ...] = ()  # sluice.schedules.row of each, by name
    scheduler_leader: str | None = None  # the lease holder's instance name
    scheduler_term: int | None = None  # its fencing token: leader changes so far, fleet-wide
    handle_counts: dict[str, int] = field(default_factory=dict)  # sluice.handles.client.COUNTS -> n
    frozen: dict[str, float] = field(default_factory=dict)  # frozen key or scope -> seconds left
    # adaptive limit key -> (its effective rate, its declared rate), units per second; below declared only
    adaptive: dict[str, tuple[float, float]] = field(default_factory=dict)


class RedisStateSource:
    def __init__(self, redis: AnyRedis, prefix: str, *, timeout: float = 2.0, max_keys: int = 200) -> None:
        self._redis = redis
        self._keys = KeySpace(prefix)
        self._limits = LimitStore(redis, prefix)
        self._schedules = ScheduleStore(redis, prefix, timeout=timeout)
        self._handles = TaskHandles(redis, prefix, timeout=timeout)
        self._freezes = Freezes(redis, keys=self._keys, timeout=timeout)
        self._timeout = timeout
        self._max_keys = max_keys

    async def read(self) -> RedisSnapshot:
        try:
            async with asyncio.timeout(self._timeout):
                states = await breaker_states(self._redis, self._keys, max_keys=self._max_keys)
                limits = await self._limits.all()
                entries = await self._schedules.entries()
                leader = await self._schedules.leader()
                counts = await self._handles.counts()
                frozen = await self._freezes.frozen(max_keys=self._max_keys)
                adaptive = await adaptive_rates(self._redis, keys=self._keys, max_keys=self._max_keys)
        except (RedisError, OSError, TimeoutError, ScheduleError, TrackingUnavailable, BackendUnavailable):
            return RedisSnapshot(False)
        return RedisSnapshot(
            True,
            {name: state.name.lower() for name, state in states.items()},
            {task: {"rate": str(limit), "burst": limit.burst} for task, limit in limits.items()},
            tuple(row(e) for e in entries[: self._max_keys]),
            None if leader is None else leader.holder,
            None if leader is None else leader.token,
            counts,
            {f.name: max(f.remaining, 0.0) for f in frozen},
            {a.name: (a.per_second, a.declared / a.period) for a in adaptive},
        )

    async def aclose(self) -> None:
        """Hand back the connections the schedule and count reads kept."""
        await self._schedules.aclose()
        await self._handles.aclose()
