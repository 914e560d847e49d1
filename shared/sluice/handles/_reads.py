"""Status reads, batched: the reads asked for while one is on the wire go together in the next pipeline.

A read is ``HGETALL`` of the record and ``LRANGE`` of its history, in ``MULTI ... EXEC`` (one round trip,
one consistent snapshot of the two keys, which share a slot). A batch of reads of several ids is one
plain pipeline of those pairs (one round trip; on Redis Cluster the client splits it by node, which a
transaction across slots could not be). A read asked for when nothing is on the wire goes at once, alone. So 200 waiters woken together cost a few
round trips on one or two connections, not 200 connections of the client's pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sluice.redis_client import AnyRedis
from sluice.resilience._scripts import _UNREACHABLE

from ._codec import decode_status
from ._keys import HandleKeys
from .errors import TrackingUnavailable
from .status import TaskStatus

__all__ = ["StatusReads"]

_MAX_BATCH = 256
_MAX_INFLIGHT = 2


class StatusReads:
    def __init__(self, redis: AnyRedis, keys: HandleKeys, *, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._timeout = timeout
        self._pending: list[tuple[str, asyncio.Future[TaskStatus]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def read(self, task_id: str) -> TaskStatus:
        if not self._inflight and not self._pending:
            self._inflight += 1
            try:
                return (await self._fetch([task_id]))[0]
            finally:
                self._inflight -= 1
                self._schedule()
        fut: asyncio.Future[TaskStatus] = asyncio.get_running_loop().create_future()
        self._pending.append((task_id, fut))
        self._schedule()
        return await fut

    def _schedule(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < _MAX_INFLIGHT:
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            self._inflight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[TaskStatus]]]) -> None:
        try:
            statuses = await self._fetch([task_id for task_id, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(
                        exc if isinstance(exc, Exception) else TrackingUnavailable("read cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, fut), status in zip(batch, statuses, strict=True):
                if not fut.done():
                    fut.set_result(status)
        finally:
            self._inflight -= 1
            self._schedule()

    async def _fetch(self, ids: list[str]) -> list[TaskStatus]:
        keys = self._keys
        self.batches += 1
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=len(ids) == 1) as pipe:
                    for task_id in ids:
                        pipe.hgetall(keys.task(task_id))
                        pipe.lrange(keys.history(task_id), 0, -1)
                    replies: list[Any] = await pipe.execute()
        except _UNREACHABLE as exc:
            raise TrackingUnavailable(f"task status unavailable: redis did not answer: {exc!r}") from exc
        return [decode_status(i, replies[2 * n], replies[2 * n + 1]) for n, i in enumerate(ids)]
