"""Breaker states and run-time rate-limit overrides, read from Redis (layout: docs/resilience.md).

Breakers: ``{prefix}:breaker:{<name>}`` hashes whose ``state`` field is ``o`` (open), ``h`` (half-open)
or absent (closed) - found with SCAN (at most ``max_keys``), read in one pipeline.
Limits: the override hash ``{prefix}:limits:{overrides}`` (``sluice limits set``), JSON values
``{"rate": "50/s", "burst": 10}``. A read never takes longer than ``timeout``; an unreachable Redis gives
``redis_up=False`` and the previous values are not kept (shown as unknown).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sluice.resilience import BreakerState, KeySpace

__all__ = ["RedisSnapshot", "RedisStateSource"]


@dataclass(frozen=True, slots=True)
class RedisSnapshot:
    redis_up: bool
    breakers: dict[str, str] = field(default_factory=dict)  # name -> closed | open | half_open
    limits: dict[str, dict[str, object]] = field(default_factory=dict)  # task -> {"rate", "burst"}


_STATES = {"o": BreakerState.OPEN, "h": BreakerState.HALF_OPEN}


def state_name(code: object) -> str:
    if isinstance(code, bytes):
        code = code.decode()
    return _STATES.get(str(code), BreakerState.CLOSED).name.lower()


class RedisStateSource:
    def __init__(self, redis: Redis, prefix: str, *, timeout: float = 2.0, max_keys: int = 200) -> None:
        self._redis = redis
        self._keys = KeySpace(prefix)
        self._timeout = timeout
        self._max_keys = max_keys

    async def read(self) -> RedisSnapshot:
        try:
            async with asyncio.timeout(self._timeout):
                return RedisSnapshot(True, await self._breakers(), await self._limits())
        except (RedisError, OSError, TimeoutError):
            return RedisSnapshot(False)

    async def _breakers(self) -> dict[str, str]:
        pattern = f"{self._keys.prefix}:breaker:*"
        keys: list[bytes | str] = []
        async for key in self._redis.scan_iter(match=pattern, count=200):
            keys.append(key)
            if len(keys) >= self._max_keys:
                break
        names: list[str] = []
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            text = key.decode() if isinstance(key, bytes) else key
            rest = text[len(pattern) - 1 :]
            if not (rest.startswith("{") and rest.endswith("}")):
                continue  # another part of a breaker's keys, not its state hash
            names.append(rest[1:-1])
            pipe.hget(text, "state")
        codes = await pipe.execute() if names else []
        return {n: state_name(c) for n, c in sorted(zip(names, codes, strict=True))}

    async def _limits(self) -> dict[str, dict[str, object]]:
        raw = await self._redis.hgetall(self._keys.key("limits", "overrides"))
        out: dict[str, dict[str, object]] = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else str(k)
            try:
                doc = json.loads(v)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("rate"), str):
                out[name] = {"rate": doc["rate"], "burst": doc.get("burst")}
        return dict(sorted(out.items()))
