"""Rate limits changed at run time, without a redeploy: one Redis hash read by every worker.

``sluice limits set demo.email 50/s --burst 10`` writes the hash field ``demo.email``; each worker reads
the whole hash at most every ``refresh`` seconds (2 by default) and from then on limits the task to
50/s fleet-wide, whatever its decorator says (a per-tenant ``key`` declared on the task is kept).
``sluice limits rm demo.email`` goes back to the declared limit (or none).

The hash is ``{prefix}:limits:{overrides}``; each value is JSON ``{"rate": "50/s", "burst": 10}`` (the rate as
:class:`~sluice.policy.RateLimit` prints it: ``"50/s sliding"``, ``"200/s adaptive"`` keep their window).
:meth:`LimitStore.in_memory` keeps the hash on a :class:`~sluice.resilience.memory.MemoryBackend` instead
(tests, :mod:`sluice.testing`), under the same key: an override set there is read by every store on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from redis.exceptions import RedisError

from sluice.errors import ConfigError
from sluice.policy import RateLimit
from sluice.redis_client import AnyRedis
from sluice.resilience import BackendUnavailable, KeySpace, MemoryBackend

__all__ = ["LimitStore", "effective_rate"]

log = logging.getLogger("sluice.limits")

_FOREVER_MS = 100 * 365 * 86_400_000  # the hash has no TTL on Redis: a century on the in-memory backend


class _MemoryHash:
    """The three hash commands the store sends, on a :class:`MemoryBackend` (one dict at the key)."""

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend

    def _hash(self, key: str) -> dict[str, str]:
        if not self._backend.available:
            raise BackendUnavailable("the in-memory backend is set unavailable")
        found = self._backend.model(key)
        return found if isinstance(found, dict) else {}

    async def hgetall(self, key: str) -> dict[bytes | str, bytes | str]:
        out: dict[bytes | str, bytes | str] = {k: v for k, v in self._hash(key).items()}
        return out

    async def hset(self, key: str, field: str, value: str) -> int:
        h = self._hash(key)
        added = int(field not in h)
        self._backend.keep(key, {**h, field: value}, _FOREVER_MS)
        return added

    async def hdel(self, key: str, field: str) -> int:
        h = self._hash(key)
        if field not in h:
            return 0
        rest = {k: v for k, v in h.items() if k != field}
        if rest:
            self._backend.keep(key, rest, _FOREVER_MS)
        else:
            self._backend.delete(key)
        return 1


def _encode(limit: RateLimit) -> str:
    return json.dumps({"rate": str(limit), "burst": limit.burst})


def _decode(raw: bytes | str) -> RateLimit:
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("rate"), str):
        raise ConfigError(f"bad limit override {raw!r}")
    burst = doc.get("burst")
    return RateLimit.parse(doc["rate"], burst=burst if isinstance(burst, int) else None)


def effective_rate(declared: RateLimit | None, override: RateLimit | None) -> RateLimit | None:
    """The limit that applies: the override (keeping the declared per-tenant key), else the declared."""
    if override is None:
        return declared
    if declared is not None and declared.key is not None:
        return replace(override, key=declared.key)
    return override


class LimitStore:
    """Read and write the overrides; :meth:`current` answers from a copy refreshed every ``refresh`` s."""

    def __init__(
        self,
        redis: AnyRedis | _MemoryHash,
        prefix: str,
        *,
        refresh: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = KeySpace(prefix).key("limits", "overrides")
        self._redis = redis
        self._refresh = refresh
        self._clock = clock
        self._cache: dict[str, RateLimit] = {}
        self._fresh_until = -1.0
        self._refreshing: asyncio.Future[None] | None = None
        self._warned = False
        self._bad: set[tuple[str, bytes | str]] = set()  # malformed entries already warned about

    @classmethod
    def in_memory(
        cls,
        backend: MemoryBackend,
        prefix: str,
        *,
        refresh: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> LimitStore:
        """A store whose hash lives on the in-memory ``backend`` (``available = False``: unreadable)."""
        return cls(_MemoryHash(backend), prefix, refresh=refresh, clock=clock)

    async def all(self) -> dict[str, RateLimit]:
        """Every override, by task name (one round trip).

        A malformed entry is skipped, with a warning the first time this store sees it (a dashboard
        reading every second must not log it every second).
        """
        raw: Mapping[bytes | str, bytes | str] = await self._redis.hgetall(self.key)
        out: dict[str, RateLimit] = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            try:
                out[name] = _decode(v)
            except ValueError as e:  # ConfigError is a ValueError too
                if (name, v) not in self._bad:
                    if len(self._bad) >= 1_000:
                        self._bad.clear()
                    self._bad.add((name, v))
                    log.warning("ignoring the limit override of %s: %s", name, e)
        return dict(sorted(out.items()))

    async def set(self, task: str, limit: RateLimit) -> None:
        await self._redis.hset(self.key, task, _encode(limit))
        self._fresh_until = -1.0

    async def remove(self, task: str) -> bool:
        """Drop the override of ``task``; False if it had none."""
        removed: int = await self._redis.hdel(self.key, task)
        self._fresh_until = -1.0
        return removed > 0

    async def current(self, task: str) -> RateLimit | None:
        """The override of ``task`` as of at most ``refresh`` seconds ago.

        Callers arriving while the copy is being refreshed wait for that one read (never a read each).
        When Redis cannot be read the last known overrides stay in force (logged once).
        """
        if self._clock() >= self._fresh_until:
            if self._refreshing is None:
                self._refreshing = asyncio.ensure_future(self._refresh_copy())
            refreshing = self._refreshing
            await asyncio.shield(refreshing)
        return self._cache.get(task)

    async def _refresh_copy(self) -> None:
        try:
            self._cache = await self.all()
            self._warned = False
        except (RedisError, OSError, BackendUnavailable) as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot read the limit overrides (%s); keeping the last known ones", e)
        finally:
            self._fresh_until = self._clock() + self._refresh
            self._refreshing = None
