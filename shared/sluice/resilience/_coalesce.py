"""Batching: script calls made while others are in flight go out together in one pipeline.

A call made when nothing is in flight goes out at once, alone (a single caller pays nothing for
batching). A call made while something is in flight is queued; the first queued call in a loop
iteration schedules a flush for the end of that iteration, and everything queued until then shares
one pipeline (one round trip). With ``max_inflight`` sends already on the wire the queue waits and
grows, so under load the batch size grows by itself. With ``multi`` a batch is one call of that script
where the server allows it (see :mod:`._multi`), else a pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._multi import MultiScript
from ._scripts import Call, ScriptRunner
from .errors import BackendUnavailable

__all__ = ["Coalescer"]


class Coalescer:
    def __init__(
        self,
        runner: ScriptRunner,
        *,
        max_batch: int = 256,
        max_inflight: int = 2,
        multi: MultiScript | None = None,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._runner = runner
        self._multi = multi
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent_alone = 0  # calls sent at once, nothing else being in flight
        self.batches = 0  # pipelines sent
        self.batched_calls = 0  # calls sent in those pipelines

    async def call(self, call: Call) -> Any:
        """The script's reply: sent at once when nothing is in flight, else in the next batch."""
        if self._inflight or self._pending:
            return await self.submit(call)
        self._inflight += 1
        self.sent_alone += 1
        try:
            return await self._runner.run(*call)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._flush()

    def submit(self, call: Call) -> asyncio.Future[Any]:
        """Queue ``call`` for the next batch."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            self.batches += 1
            self.batched_calls += len(batch)
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._runner.run_many([call for call, _ in batch], self._multi)
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(BackendUnavailable("batch cancelled"))
            raise
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._flush()

    async def aclose(self) -> None:
        """Wait for the batches on the wire."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
