"""Running Lua scripts: EVALSHA with a NOSCRIPT fallback, every call under a deadline.

A script is sent by its SHA1. When Redis answers NOSCRIPT (after ``SCRIPT FLUSH``, a restart, or a
fail-over to a replica that never saw it) the runner loads it and sends it again: NOSCRIPT means the
script did not run, so the second send cannot double an effect. Connection errors and deadlines
become :class:`BackendUnavailable`, which each primitive turns into its outage policy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

from .errors import BackendUnavailable

__all__ = ["Script", "ScriptRunner"]

Arg = str | int | float | bytes

#: Errors that mean "Redis is not there" (as opposed to a script bug, which must surface).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ReadOnlyError,
    TimeoutError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


Call = tuple[Script, Sequence[str], Sequence[Arg]]


class ScriptRunner:
    """Runs scripts on one client; ``timeout`` bounds every call, including its NOSCRIPT retry."""

    def __init__(self, redis: Redis, *, timeout: float = 0.5) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.redis = redis
        self.timeout = timeout

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script call, one round trip (two after a NOSCRIPT)."""
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
                except rexc.NoScriptError:
                    await self.redis.script_load(script.source)
                    return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except _UNREACHABLE as exc:
            raise BackendUnavailable(f"redis did not answer {script.name}: {exc!r}") from exc

    async def command(self, *args: Arg) -> Any:
        """A plain command (DEL, ZREM, ...) under the same deadline and error mapping."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]
        except _UNREACHABLE as exc:
            raise BackendUnavailable(f"redis did not answer {args[0]!r}: {exc!r}") from exc

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Many script calls in one pipeline (one round trip). Per-call Redis errors come back as values."""
        try:
            async with asyncio.timeout(self.timeout):
                results = await self._pipeline(calls)
                missing = [i for i, r in enumerate(results) if isinstance(r, rexc.NoScriptError)]
                if missing:
                    for script in {calls[i][0] for i in missing}:
                        await self.redis.script_load(script.source)
                    again = await self._pipeline([calls[i] for i in missing])
                    for i, r in zip(missing, again, strict=True):
                        results[i] = r
                return results
        except _UNREACHABLE as exc:
            raise BackendUnavailable(f"redis did not answer a batch of {len(calls)}: {exc!r}") from exc

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        async with pipe:
            return list(await pipe.execute(raise_on_error=False))
