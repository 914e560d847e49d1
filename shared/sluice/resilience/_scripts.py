"""Running Lua scripts: EVALSHA with a NOSCRIPT fallback, every call under a deadline.

A script is sent by its SHA1. When Redis answers NOSCRIPT (after ``SCRIPT FLUSH``, a restart, or a
fail-over to a replica that never saw it) the runner loads it and sends it again: NOSCRIPT means the
script did not run, so the second send cannot double an effect. Connection errors and deadlines
become :class:`BackendUnavailable`, which each primitive turns into its outage policy.

Transports: on a plain standalone client the lean one (:mod:`._wire`); on a ``RedisCluster`` the lean one
per node (:mod:`._wire_cluster`), which hands a call back to the client's ``execute_command`` (or its
pipeline) whenever the slot map is stale or a node is gone; otherwise the client's ``execute_command``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis import exceptions as rexc

from sluice.errors import ConfigError
from sluice.redis_client import AnyRedis

from ._wire import Arg, bulk, pack, wire_for
from ._wire_cluster import REROUTE, cluster_wire_for
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from ._multi import MultiScript

__all__ = ["Arg", "Call", "Runner", "Script", "ScriptRunner"]

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


class Runner(Protocol):
    """What a primitive sends its script calls to: :class:`ScriptRunner` (Redis) or the in-memory
    backend's runner (``sluice.resilience._memory``). Chosen once, when the primitive is built."""

    timeout: float

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any: ...

    async def run_many(self, calls: Sequence[Call], multi: MultiScript | None = None) -> list[Any]: ...

    async def command(self, *args: Arg) -> Any: ...

    async def aclose(self) -> None: ...


class ScriptRunner:
    """Runs scripts on one client; every call is bounded by ``timeout`` (at most 1.25 x, see below).

    The deadline is enforced by one watchdog timer per runner, not one timer per call: a call
    registers its deadline, and a sweep every ``timeout / 4`` cancels the calls past theirs and turns
    that cancellation into :class:`BackendUnavailable`. It is ``asyncio.timeout`` amortised over all
    the calls in flight (a per-call timer costs about 10 % of a decision on the hot path). A
    cancellation that comes from elsewhere is never swallowed.
    """

    def __init__(self, redis: AnyRedis, *, timeout: float = 0.5) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        self.redis = redis
        self.timeout = timeout
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_loop: asyncio.AbstractEventLoop | None = None
        self._wire = wire_for(redis)
        self._cluster = cluster_wire_for(redis)
        self._heads: dict[tuple[str, int, int], bytes] = {}

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """One script call, one round trip (two after a NOSCRIPT). Kept flat: it is the hot path."""
        task, cancelling = self._arm()
        wire = self._wire
        try:
            if wire is not None:
                packed = self._pack(script, keys, args)
                reply = (await wire.request(packed))[0]
                if isinstance(reply, rexc.NoScriptError):
                    await self._load(script)
                    reply = (await wire.request(packed))[0]
                if isinstance(reply, Exception):
                    raise reply
                return reply
            cluster = self._cluster
            if cluster is not None and (node := cluster.node(keys)) is not None:
                reply = await cluster.call(node, self._pack(script, keys, args), script.source)
                if reply is not REROUTE:
                    if isinstance(reply, Exception):
                        raise reply
                    return reply
            execute = self.redis.execute_command
            try:
                return await execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                await self.redis.script_load(script.source)
                return await execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException as exc:
            mapped = self._map(task, cancelling, script.name, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            self._disarm(task)

    def _pack(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
        """``EVALSHA sha numkeys *keys *args`` in RESP; the constant head is packed once."""
        shape = (script.sha, len(keys), len(args))
        head = self._heads.get(shape)
        if head is None:
            count = b"*%d\r\n" % (3 + len(keys) + len(args))
            head = self._heads[shape] = count + bulk("EVALSHA") + bulk(script.sha) + bulk(len(keys))
        return head + b"".join(map(bulk, keys)) + b"".join(map(bulk, args))

    async def _load(self, script: Script) -> None:
        """``SCRIPT LOAD`` after a NOSCRIPT, on the transport the call went on: on the lean one it needs no
        connection of the pool, which its own requests may hold every one of."""
        if self._wire is None:
            await self.redis.script_load(script.source)
            return
        (reply,) = await self._wire.request(pack(["SCRIPT", "LOAD", script.source]))
        if isinstance(reply, Exception):
            raise reply

    async def aclose(self) -> None:
        """Hand the connections this runner kept back to the client's pool."""
        if self._wire is not None:
            await self._wire.aclose()

    async def command(self, *args: Arg) -> Any:
        """A plain command (DEL, ZREM, ...) under the same deadline and error mapping."""
        return await self._bounded(str(args[0]), self.redis.execute_command(*args))

    async def run_many(self, calls: Sequence[Call], multi: MultiScript | None = None) -> list[Any]:
        """Many script calls in one round trip. Per-call Redis errors come back as values.

        With ``multi`` (covering every call) and on the lean transport (a standalone server), the calls go
        as one call of that script; on a cluster, split by node, each node's calls as one call of its node
        script (:mod:`._wire_cluster`); otherwise as a pipeline.
        """
        if multi is not None and self._wire is not None and len(calls) > 1 and multi.covers(calls):
            return await self._bounded(f"a batch of {len(calls)}", self._multi(multi, calls))  # type: ignore[no-any-return]
        return await self._bounded(f"a batch of {len(calls)}", self._batch(calls, multi))  # type: ignore[no-any-return]

    async def _multi(self, multi: MultiScript, calls: Sequence[Call]) -> list[Any]:
        assert self._wire is not None
        packed = multi.pack(calls)
        reply = (await self._wire.request(packed))[0]
        if isinstance(reply, rexc.NoScriptError):
            await self._load(multi.script)
            reply = (await self._wire.request(packed))[0]
        if isinstance(reply, Exception):
            raise reply
        return list(reply)

    async def _batch(self, calls: Sequence[Call], multi: MultiScript | None = None) -> list[Any]:
        results = await self._pipeline(calls, multi)
        missing = [i for i, r in enumerate(results) if isinstance(r, rexc.NoScriptError)]
        if missing:
            for script in {calls[i][0] for i in missing}:
                await self._load(script)
            again = await self._pipeline([calls[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    async def _pipeline(self, calls: Sequence[Call], multi: MultiScript | None = None) -> list[Any]:
        if self._wire is not None:
            packed = b"".join([self._pack(script, keys, args) for script, keys, args in calls])
            return await self._wire.request(packed, len(calls))
        if self._cluster is not None:
            results = await self._cluster.run_many(calls, lambda c: self._pack(*c), multi)
            back = [i for i, r in enumerate(results) if r is REROUTE]
            if back:  # a stale slot map or a node gone: the client's pipeline follows and refreshes it
                again = await self._client_pipeline([calls[i] for i in back])
                for i, r in zip(back, again, strict=True):
                    results[i] = r
            return results
        return await self._client_pipeline(calls)

    async def _client_pipeline(self, calls: Sequence[Call]) -> list[Any]:
        # queued inside the block (a cluster pipeline drops what was queued before entering it) and as a
        # raw EVALSHA (redis-py's cluster pipeline refuses its evalsha method): the same on one server
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _bounded(self, what: str, call: Coroutine[Any, Any, Any]) -> Any:
        task, cancelling = self._arm()
        try:
            return await call
        except BaseException as exc:
            mapped = self._map(task, cancelling, what, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            self._disarm(task)

    def _arm(self) -> tuple[asyncio.Task[Any], int]:
        """Register the current task's deadline; start the watchdog if it is not running."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("sluice.resilience must be used from an asyncio task")
        loop = task.get_loop()
        self._deadlines[task] = loop.time() + self.timeout
        if self._watchdog is None or self._watchdog_loop is not loop:
            self._watchdog_loop = loop
            self._watchdog = loop.call_later(self.timeout / 4, self._sweep)
        return task, task.cancelling()

    def _map(self, task: asyncio.Task[Any], cancelling: int, what: str, exc: BaseException) -> BaseException:
        """The exception a failed call raises: Redis trouble and our own deadline become BackendUnavailable."""
        if isinstance(exc, asyncio.CancelledError):
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() <= cancelling:  # our deadline, not someone else's cancellation
                    return BackendUnavailable(f"redis did not answer {what} within {self.timeout} s")
            return exc
        if isinstance(exc, _UNREACHABLE):
            return BackendUnavailable(f"redis did not answer {what}: {exc!r}")
        return exc

    def _disarm(self, task: asyncio.Task[Any]) -> None:
        del self._deadlines[task]
        if task in self._expired:  # cancelled by the watchdog, but the client swallowed the cancellation
            self._expired.discard(task)
            task.uncancel()

    def _sweep(self) -> None:
        self._watchdog = None
        loop = self._watchdog_loop
        if not self._deadlines or loop is None or loop.is_closed():
            return
        now = loop.time()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._watchdog = loop.call_later(self.timeout / 4, self._sweep)
