"""Batching: script calls made while others are in flight go out together in one pipeline.

A call made when nothing is in flight goes out at once, alone (a single caller pays nothing for
batching). A call made while something is in flight is queued; the first queued call in a loop
iteration schedules a flush for the end of that iteration, and everything queued until then shares
one pipeline (one round trip). With ``max_inflight`` sends already on the wire the queue waits and
grows, so under load the batch size grows by itself. With ``multi`` a batch is one call of that script
where the server allows it (see :mod:`._multi`), else a pipeline.

``min_batch`` and ``linger``: a batch of fewer than ``min_batch`` calls waits until that many are queued
or its first call has waited ``linger`` seconds. Each batch costs a send and a receive, and on a busy
2-core machine a loopback send alone costs tens of microseconds of client CPU: a process bound by its
own CPU does more work per second with fewer, larger batches, for a few milliseconds of latency. Only
queued calls linger: a call made when nothing is in flight still goes out at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sluice._closing import AsyncClosing
from sluice.errors import ConfigError

from ._multi import MultiScript
from ._scripts import Call, Runner
from .errors import BackendUnavailable

__all__ = ["Coalescer", "CoalescingClient", "Queued"]


class Queued:
    """A call waiting for its batch; ``call`` may be replaced until ``sent``. A call given as a function
    is built only when its batch is sent: not at all if it is replaced first."""

    __slots__ = ("call", "fut", "sent")

    def __init__(self, call: Call | Callable[[], Call], fut: asyncio.Future[Any]) -> None:
        self.call = call
        self.fut = fut
        self.sent = False

    def built(self) -> Call:
        call = self.call
        if callable(call):
            call = self.call = call()
        return call


class Coalescer:
    def __init__(
        self,
        runner: Runner,
        *,
        max_batch: int = 256,
        max_inflight: int = 2,
        multi: MultiScript | None = None,
        min_batch: int = 1,
        linger: float = 0.0,
    ) -> None:
        if max_batch < 1 or max_inflight < 1 or not 1 <= min_batch <= max_batch:
            raise ConfigError(
                "max_batch and max_inflight must be at least 1, min_batch within [1, max_batch]"
            )
        if linger < 0:
            raise ConfigError("linger must not be negative")
        self._runner = runner
        self._multi = multi
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._min_batch = min_batch
        self._linger = linger
        self._pending: list[Queued] = []
        self._since = 0.0  # when the oldest pending call was queued (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
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
        return self.queue(call).fut

    def queue(self, call: Call | Callable[[], Call]) -> Queued:
        """Queue ``call`` (or the call a function builds when it is sent) for the next batch: its entry
        (replaceable until sent)."""
        loop = asyncio.get_running_loop()
        entry = Queued(call, loop.create_future())
        pending = self._pending
        if not pending:
            self._since = loop.time()
        pending.append(entry)
        if not self._scheduled and (self._timer is None or len(pending) >= self._min_batch):
            self._scheduled = True
            loop.call_soon(self._flush)
        return entry

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            if len(self._pending) < self._min_batch and not self._closing:
                loop = asyncio.get_running_loop()
                wait = self._since + self._linger - loop.time()
                if wait > 0:  # a small batch: wait for more, or for its first call's linger to end
                    if self._timer is None:
                        self._timer = loop.call_later(wait, self._lingered)
                    return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            for entry in batch:
                entry.sent = True
            if self._pending:
                self._since = asyncio.get_running_loop().time()
            self._inflight += 1
            self.batches += 1
            self.batched_calls += len(batch)
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Queued]) -> None:
        try:
            results = await self._runner.run_many([e.built() for e in batch], self._multi)
        except asyncio.CancelledError:
            for e in batch:
                if not e.fut.done():
                    e.fut.set_exception(BackendUnavailable("batch cancelled"))
            raise
        except Exception as exc:
            for e in batch:
                if not e.fut.done():
                    e.fut.set_exception(exc)
        else:
            for e, result in zip(batch, results, strict=True):
                fut = e.fut
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

    def _lingered(self) -> None:
        self._timer = None
        self._flush()

    async def aclose(self) -> None:
        """Send what is queued (without lingering) and wait for the batches on the wire."""
        self._closing = True
        while self._pending or self._tasks:
            if self._pending and not self._scheduled:
                self._flush()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:  # queued behind a lone call still on the wire: it flushes them when it returns
                await asyncio.sleep(0.001)


class CoalescingClient(AsyncClosing):
    """A primitive whose calls go through ``_runner``, batched by ``_coalescer`` when it has one: closing it
    (``aclose``, or leaving ``async with``) waits for the batches on the wire, then closes the runner."""

    __slots__ = ()
    _runner: Runner
    _coalescer: Coalescer | None

    async def aclose(self) -> None:
        """Wait for the batches still on the wire and hand kept connections back to the client's pool."""
        if self._coalescer is not None:
            await self._coalescer.aclose()
        await self._runner.aclose()
