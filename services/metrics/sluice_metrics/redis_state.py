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

Breakers, freezes and adaptive rates are found by ``SCAN``, which walks the whole keyspace: on a Redis of
a million task records (a day of tracked tasks at 12 a second) one pass took 3.4 s here, and with it
inside the read's 2 s bound every read timed out: the service said Redis was down. So the three scans run
as one task of their own, bounded by ``scan_timeout``, and each read waits for it at most ``scan_wait``
(within its own bound): on a small keyspace a pass takes milliseconds and every read has fresh figures,
as before; on a large one the read shows the last completed pass (as old as one pass) and a new pass
starts once it ended. The other reads (limits, schedules, counts) name their keys and do not depend on
the keyspace's size.
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


_Scanned = tuple[dict[str, str], dict[str, float], dict[str, tuple[float, float]]]


class RedisStateSource:
    def __init__(
        self,
        redis: AnyRedis,
        prefix: str,
        *,
        timeout: float = 2.0,
        max_keys: int = 200,
        scan_timeout: float = 60.0,
        scan_wait: float = 0.25,
    ) -> None:
        self._redis = redis
        self._keys = KeySpace(prefix)
        self._limits = LimitStore(redis, prefix)
        self._schedules = ScheduleStore(redis, prefix, timeout=timeout)
        self._handles = TaskHandles(redis, prefix, timeout=timeout)
        self._freezes = Freezes(redis, keys=self._keys, timeout=timeout)
        self._timeout = timeout
        self._max_keys = max_keys
        self._scan_timeout = scan_timeout
        self._scan_wait = scan_wait
        self._scan: asyncio.Task[_Scanned] | None = None  # the pass under way
        self._scanned: _Scanned | None = None  # the last pass that completed

    async def read(self) -> RedisSnapshot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        if self._scan is None:
            self._scan = asyncio.create_task(self._scan_keyspace(), name="sluice-metrics-scan")
        try:
            async with asyncio.timeout_at(deadline):
                limits = await self._limits.all()
                entries = await self._schedules.entries()
                leader = await self._schedules.leader()
                counts = await self._handles.counts()
        except (RedisError, OSError, TimeoutError, ScheduleError, TrackingUnavailable, BackendUnavailable):
            self._scanned = None  # unknown, not the figures of before the outage
            return RedisSnapshot(False)
        await self._take_scan(max(0.0, min(self._scan_wait, deadline - loop.time())))
        states, frozen, adaptive = self._scanned or ({}, {}, {})
        return RedisSnapshot(
            True,
            states,
            {task: {"rate": str(limit), "burst": limit.burst} for task, limit in limits.items()},
            tuple(row(e) for e in entries[: self._max_keys]),
            None if leader is None else leader.holder,
            None if leader is None else leader.token,
            counts,
            frozen,
            adaptive,
        )

    async def _take_scan(self, within: float) -> None:
        """Wait up to ``within`` for the pass under way; once it ended, keep its figures (a pass that
        failed leaves none) and let the next read start another."""
        scan = self._scan
        assert scan is not None
        await asyncio.wait([scan], timeout=within)
        if not scan.done():
            return
        self._scan = None
        if scan.cancelled() or scan.exception() is not None:
            self._scanned = None
            return
        self._scanned = scan.result()

    async def _scan_keyspace(self) -> _Scanned:
        """One pass of the three scans: breaker states, freezes, adaptive rates (bounded)."""
        async with asyncio.timeout(self._scan_timeout):
            states = await breaker_states(self._redis, self._keys, max_keys=self._max_keys)
            frozen = await self._freezes.frozen(max_keys=self._max_keys)
            adaptive = await adaptive_rates(self._redis, keys=self._keys, max_keys=self._max_keys)
        return (
            {name: state.name.lower() for name, state in states.items()},
            {f.name: max(f.remaining, 0.0) for f in frozen},
            {a.name: (a.per_second, a.declared / a.period) for a in adaptive},
        )

    async def aclose(self) -> None:
        """Stop a pass under way; hand back the connections the schedule and count reads kept."""
        if self._scan is not None:
            self._scan.cancel()
            await asyncio.gather(self._scan, return_exceptions=True)
            self._scan = None
        await self._schedules.aclose()
        await self._handles.aclose()
