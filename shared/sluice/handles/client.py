""":class:`TaskHandles`: status, wait, result and cancel a task by its id; unique enqueue; the producer's
``queued`` records and the DLQ replay's new generation. The Python door (the producer's HTTP API and the
CLI use it too).

Costs (round trips to Redis per call):

* ``status``: 1 (``MULTI HGETALL LRANGE EXEC``, pipelined); reads asked for while one is on the wire
  share the next round trip (:mod:`._reads`), so many waiters use one or two connections.
* ``wait`` / ``result`` on a task that has ended: 1 (the status read). On one that has not: a status
  read, then nothing until the task's end is published on ``<prefix>:ended`` (one subscription per
  ``TaskHandles``, opened by the first wait and shared by every waiter), then a status read; with a
  fallback read every ``fallback`` seconds (5 by default) in case a notification was lost.
* ``cancel(*ids)``: 1 for any number of ids (one pipeline: the cancel set, then one script per id), and
  1 ``HINCRBY`` counting them.
* ``cancel_batch``, ``replayed``, ``claim_unique``, ``release_unique``: 1 script each; ``cancel_batch``
  and a ``claim_unique`` that answers another task's id (a duplicate refused) 1 ``HINCRBY`` more.
* ``counts()``: 1 (``HGETALL`` of the counts hash).
* ``mark_queued(items)``: 1 per 500 items (pipelined scripts).

Every call is bounded by ``timeout``; Redis unreachable raises :class:`TrackingUnavailable` (a status is
never guessed as ``unknown``).

Fleet-wide counts (``<prefix>:handle-stats``, read by the metrics service through :meth:`TaskHandles.counts`):
:data:`CANCELS` (task ids a cancel was recorded for), :data:`CANCEL_RULES` (batch cancels by name and
publish time), :data:`UNIQUE_DUPLICATES` (publishes refused as duplicates of the task holding their unique
key). Counted in Redis whichever door decided (the CLI is a short-lived process): one ``HINCRBY`` after
the decision, outside its script (the decision's keys carry a per-task or per-key hash tag, the counts
hash does not, so they cannot share a script on Redis Cluster). Cancels and duplicates are rare, so the
extra round trip is too. A count that fails is logged and lost; the decision stands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from sluice._closing import AsyncClosing
from sluice.errors import ConfigError
from sluice.redis_client import AnyRedis
from sluice.resilience._scripts import Arg, Call, ScriptRunner
from sluice.resilience.clock import SYSTEM, Clock
from sluice.resilience.errors import BackendUnavailable

from . import _lua
from ._codec import text
from ._keys import HandleKeys
from ._reads import StatusReads
from ._waiters import Waiters
from ._writes import HISTORY_CAP, LIVE_TTL, ms, write_call
from .errors import ResultTooLarge, TaskCancelled, TaskDead, TaskFailed, TrackingUnavailable, WaitTimeout
from .state import TERMINAL, State
from .status import CancelReport, QueuedInfo, TaskStatus

__all__ = ["CANCELS", "CANCEL_RULES", "COUNTS", "UNIQUE_DUPLICATES", "TaskHandles"]

_log = logging.getLogger("sluice.handles")
_CHUNK = 500
# the fields of the counts hash (docs/metrics.md: sluice_task_cancels_recorded_total, sluice_unique_duplicates_total)
CANCELS = "cancels"
CANCEL_RULES = "cancel_rules"
UNIQUE_DUPLICATES = "unique_duplicates"
COUNTS = (CANCELS, CANCEL_RULES, UNIQUE_DUPLICATES)


class TaskHandles(AsyncClosing):
    """Handles on tasks by id, under ``<prefix>:...`` (see :mod:`sluice.handles._keys` for the layout).

    ``ttl``: seconds a cancel (and a cancelled record) is kept; ``timeout``: the bound of each call;
    ``fallback``: seconds between a waiter's fallback reads.
    """

    def __init__(
        self,
        redis: AnyRedis,
        prefix: str = "sluice",
        *,
        clock: Clock = SYSTEM,
        ttl: float = 86400.0,
        timeout: float = 2.0,
        fallback: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not ttl > 0 or not timeout > 0 or not fallback > 0:
            raise ConfigError("ttl, timeout and fallback must be positive")
        self.keys = HandleKeys(prefix)
        self.ttl = ttl
        self._redis = redis
        self._clock = clock
        self._timeout = timeout
        self._fallback = fallback
        self._runner = ScriptRunner(redis, timeout=timeout)
        self._reads = StatusReads(redis, self.keys, timeout=timeout)
        self._waiters = Waiters(redis, self.keys.ended_channel, clock=clock, logger=logger or _log)

    @property
    def waiters(self) -> int:
        """Calls of ``wait``/``result`` waiting now."""
        return self._waiters.count

    async def status(self, task_id: str) -> TaskStatus:
        """The task's status (``unknown`` if never seen or expired). One round trip."""
        return await self._reads.read(task_id)

    async def wait(self, task_id: str, timeout: float) -> TaskStatus:  # noqa: ASYNC109 (the bound is the API)
        """Until the task ends or ``timeout`` seconds pass; the last status read (ended or not)."""
        clock = self._clock
        deadline = clock.monotonic() + max(0.0, timeout)
        waiters = self._waiters
        if not waiters.live:
            status = await self.status(task_id)
            if status.state in TERMINAL or timeout <= 0:
                return status
            await waiters.ensure(min(self._timeout, max(0.0, deadline - clock.monotonic())))
        while True:
            fut = waiters.register(task_id)
            try:
                status = await self.status(task_id)
                left = deadline - clock.monotonic()
                if status.state in TERMINAL or left <= 0:
                    return status
                await waiters.sleep(fut, min(left, self._fallback))
            finally:
                waiters.discard(task_id, fut)

    async def result(self, task_id: str, timeout: float) -> Any:  # noqa: ASYNC109 (the bound is the API)
        """The task's result once it succeeded; raises :class:`TaskFailed`, :class:`TaskDead`,
        :class:`TaskCancelled`, :class:`WaitTimeout` or (a result refused for its size)
        :class:`ResultTooLarge`."""
        status = await self.wait(task_id, timeout)
        state = status.state
        if state is State.SUCCEEDED:
            if status.result_error:
                raise ResultTooLarge(f"task {task_id}: {status.result_error}", status)
            return status.result
        if state is State.FAILED:
            error = status.error
            what = f"{error.type}: {error.message}" if error else "no error recorded"
            raise TaskFailed(f"task {task_id} failed: {what}", status)
        if state is State.DEAD:
            raise TaskDead(f"task {task_id} is dead ({status.reason or 'no reason recorded'})", status)
        if state is State.CANCELLED:
            raise TaskCancelled(f"task {task_id} was cancelled", status)
        raise WaitTimeout(f"task {task_id} did not end within {timeout:g} s (it is {state})", status)

    async def cancel(self, *task_ids: str) -> list[CancelReport]:
        """Record a cancel of each id (kept ``ttl`` seconds; every worker is told) and act on its record:
        queued, deferred, retrying or unknown -> cancelled at once; running -> ``cancel_requested`` (the
        worker finishes it); ended -> unchanged. One round trip, and one more to count the cancels."""
        if not task_ids:
            return []
        keys, ttl = self.keys, ms(self.ttl)
        calls: list[Call] = [(_lua.CANCEL_SET, [keys.cancels], ["", ttl, keys.cancel_channel, *task_ids])]
        calls += [
            (
                _lua.CANCEL_MARK,
                [keys.task(i), keys.history(i)],
                ["", ttl, HISTORY_CAP, keys.ended_channel, i],
            )
            for i in task_ids
        ]
        replies = await self._many(calls)
        reports = []
        for task_id, reply in zip(task_ids, replies[1:], strict=True):
            previous = State(text(reply))
            if previous in TERMINAL:
                reports.append(CancelReport(task_id, previous, previous))
            elif previous is State.RUNNING:
                reports.append(CancelReport(task_id, previous, State.RUNNING, requested=True))
            else:
                reports.append(CancelReport(task_id, previous, State.CANCELLED))
        await self._count(CANCELS, len(set(task_ids)))
        return reports

    async def cancel_batch(self, task: str, before_ms: int) -> None:
        """A rule: every task named ``task`` published before ``before_ms`` is cancelled when a worker
        receives it (kept ``ttl`` seconds). Tasks already running are not interrupted."""
        if not task:
            raise ConfigError("cancel_batch needs a task name")
        keys = self.keys
        args: list[Arg] = ["", ms(self.ttl), keys.cancel_channel, task, int(before_ms)]
        await self._run((_lua.CANCEL_RULE, [keys.cancel_rules], args))
        await self._count(CANCEL_RULES)

    async def mark_queued(self, items: Sequence[QueuedInfo]) -> None:
        """Record tasks as ``queued`` (generation 0, attempt 1): one pipelined round trip per 500."""
        keys = self.keys
        for start in range(0, len(items), _CHUNK):
            calls = [
                write_call(
                    keys,
                    item.id,
                    State.QUEUED,
                    generation=0,
                    attempt=1,
                    ttl=LIVE_TTL,
                    info={
                        "task": item.task,
                        "queue": item.queue,
                        "published": str(item.published_ms),
                        "unique": item.unique_key,
                        "unique_release": item.unique_release if item.unique_key else None,
                    },
                )
                for item in items[start : start + _CHUNK]
            ]
            await self._many(calls)

    async def replayed(self, task_id: str) -> int:
        """A DLQ replay: the task is ``queued`` again in the next generation (history kept, attempt 1).
        Answers the new generation (the replayed copy carries it in ``x-sluice-generation``).

        A cancel recorded for the id (or a ``cancel_batch`` rule covering its name and publish time) still
        holds: the replayed copy is acked as cancelled when a worker receives it."""
        keys = self.keys
        args: list[Arg] = ["", ms(LIVE_TTL), HISTORY_CAP]
        return int(await self._run((_lua.REPLAY, [keys.task(task_id), keys.history(task_id)], args)))

    async def claim_unique(self, key: str, task_id: str, ttl: float) -> str | None:
        """Take the unique ``key`` for ``task_id`` for ``ttl`` seconds: ``None`` if it is now yours (or was
        already), else the id of the task holding it. Atomic: of many concurrent claims one wins."""
        if not ttl > 0:
            raise ConfigError("a unique key's ttl must be positive")
        reply = await self._run((_lua.UNIQUE_CLAIM, [self.keys.unique(key)], [task_id, ms(ttl)]))
        if reply is None:
            return None
        await self._count(UNIQUE_DUPLICATES)
        return text(reply)

    async def release_unique(self, key: str, task_id: str) -> None:
        """Free the unique ``key`` if ``task_id`` still holds it (a failed publish, the task's end)."""
        await self._run((_lua.UNIQUE_RELEASE, [self.keys.unique(key)], [task_id]))

    async def counts(self) -> dict[str, int]:
        """The fleet-wide counts (:data:`COUNTS`, 0 when never counted). One round trip."""
        try:
            raw = await self._runner.command("HGETALL", self.keys.stats)
        except BackendUnavailable as exc:
            raise TrackingUnavailable(str(exc)) from exc
        except RedisError as exc:  # not a hash (someone else's key): say so, do not guess zeros
            raise TrackingUnavailable(f"cannot read {self.keys.stats}: {exc}") from exc
        got = {text(k): v for k, v in (raw or {}).items()} if isinstance(raw, dict) else _pairs(raw)
        out = {}
        for name in COUNTS:
            try:
                out[name] = int(got.get(name, 0))
            except (TypeError, ValueError):
                out[name] = 0
        return out

    async def _count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the fleet-wide count ``name``. Never raises: the decision it counts is made."""
        try:
            await self._runner.command("HINCRBY", self.keys.stats, name, n)
        except (BackendUnavailable, RedisError) as exc:
            _log.warning("could not count %s in %s (%s): the count is lost", name, self.keys.stats, exc)

    async def _run(self, call: Call) -> Any:
        try:
            return await self._runner.run(*call)
        except BackendUnavailable as exc:
            raise TrackingUnavailable(str(exc)) from exc

    async def _many(self, calls: Sequence[Call]) -> list[Any]:
        try:
            replies = await self._runner.run_many(calls, _lua.MULTI)
        except BackendUnavailable as exc:
            raise TrackingUnavailable(str(exc)) from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def aclose(self) -> None:
        """Close the waiters' subscription and hand kept connections back to the client's pool."""
        await self._waiters.aclose()
        await self._runner.aclose()


def _pairs(raw: Any) -> dict[str, Any]:
    """A flat ``[field, value, ...]`` HGETALL reply (a client without response callbacks) as a dict."""
    items = list(raw or ())
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
