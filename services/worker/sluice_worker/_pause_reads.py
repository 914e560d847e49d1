"""The Redis reads behind pausing a queue (:mod:`sluice_worker.pauses`), through the library's public API.

A :class:`BlockReader` answers three questions about a task: is its breaker open (the breaker's stored
state, :meth:`~sluice.resilience.CircuitBreaker.state`: one ``HGET``), how long is its own rate-limit
key frozen (:meth:`~sluice.resilience.Freezes.get`), and does a per-tenant ``key`` decide its limit
(the declared one, or a ``sluice limits set`` override: :class:`~sluice.limits.LimitStore`'s local copy).
Its Redis client (two connections) is made on the first read, so a worker whose queues never pause never
opens it; none of these reads is on a delivery's path (the session's pause loop makes them).
"""

from __future__ import annotations

from sluice.limits import LimitStore, effective_rate
from sluice.redis_client import AnyRedis, redis_client
from sluice.resilience import BreakerState, CircuitBreaker, Freezes, KeySpace
from sluice.resilience.clock import SYSTEM, Clock
from sluice.settings import Settings
from sluice.tasks import Task

__all__ = ["BlockReader"]


class BlockReader:
    """Reads a task's blocks from the deployment's Redis (see the module doc)."""

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM) -> None:
        self._settings = settings
        self._clock = clock
        self._keys = KeySpace(settings.prefix)
        self._redis: AnyRedis | None = None
        self._freezes: Freezes | None = None
        self._limits: LimitStore | None = None
        self._breakers: dict[str, CircuitBreaker] = {}

    def _client(self) -> AnyRedis:
        if self._redis is None:
            self._redis = redis_client(
                self._settings, max_connections=2, socket_timeout=2.0, socket_connect_timeout=1.0
            )
        return self._redis

    async def breaker_open(self, task: Task) -> bool:
        """Is ``task``'s breaker open or half-open in Redis (False: closed, or no breaker)?"""
        spec = task.policy.breaker
        if spec is None:
            return False
        b = self._breakers.get(spec.name)
        if b is None:
            b = self._breakers[spec.name] = CircuitBreaker(
                self._client(), spec.name, spec.policy, keys=self._keys, clock=self._clock.monotonic
            )
        return await b.state() is not BreakerState.CLOSED

    async def frozen_for(self, name: str) -> float | None:
        """Seconds left of the freeze of ``name`` (a task's own rate-limit key), None if not frozen."""
        if self._freezes is None:
            self._freezes = Freezes(self._client(), keys=self._keys, clock=self._clock)
        found = await self._freezes.get(name)
        return None if found is None or found.remaining <= 0 else found.remaining

    async def keyed(self, task: Task) -> bool:
        """Does a per-tenant ``key`` decide ``task``'s limit (declared, or set at run time)?"""
        if self._limits is None:
            self._limits = LimitStore(self._client(), self._settings.prefix, clock=self._clock.monotonic)
        rate = effective_rate(task.policy.rate_limit, await self._limits.current(task.name))
        return rate is not None and rate.key is not None

    async def aclose(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
