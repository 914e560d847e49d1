""":class:`Tracker`: the worker's write path for task states, batched across concurrent tasks, failing open.

One per worker process. ``running``, ``deferred`` and ``retrying`` are fire-and-forget (queued for the
next batch, never awaited); ``ended`` is awaited before the ack (so a waiter woken by the end's
notification reads the final state) but never raises. Each transition is one ``WRITE`` script call
(see :mod:`sluice.handles.state` for the ordering it enforces); calls made while others are in flight
share one round trip (:class:`~sluice.resilience._coalesce.Coalescer`): one script call for the whole
batch on a standalone server (:data:`sluice.handles._lua.MULTI`), a pipeline elsewhere. ``ended`` with a unique key adds a release call to the same batch.

A task's ``running`` write is held back for ``running_after`` seconds (the worker's
``SLUICE_TRACK_RUNNING_AFTER``; 0: queued at once), then queued. One that has not left yet when its attempt
ends (or fails into ``retrying``) is not sent at all: the later write takes its place and stands for both
(``started`` stamped by how long before the end the start was, and its history entry;
:func:`~._writes.write_call`'s ``ran_ms``). A task shorter than that then costs one write an attempt, not
two (measured: the Redis side of a write is about 13 us, a second one per task adds as much again); a
longer task shows ``running`` from ``running_after`` after its start, and its ``started`` is exact.
A timer of the event loop releases the held starts that are due (one timer at a time, whatever the
number held, firing at most eight times a ``running_after``: a start may show up to an eighth of it
late); closing the tracker releases the rest first.

Redis down: the writes fail, are counted (``stats``) and logged once per outage; while it is down only
one write per second tries Redis, the others are dropped at once (counted), so tracked tasks run at
full speed and the caller never sees an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sluice.errors import ConfigError
from sluice.redis_client import AnyRedis
from sluice.resilience._coalesce import Coalescer, CoalescingClient, Queued
from sluice.resilience._scripts import Call, ScriptRunner
from sluice.resilience.clock import SYSTEM, Clock
from sluice.resilience.outage import FailOpen, OutageMonitor

from . import _lua
from ._keys import HandleKeys
from ._writes import LIVE_TTL, encode_fields, write_call
from .state import TERMINAL, ErrorInfo, State
from .status import UniqueRelease

__all__ = ["Tracker", "TrackerStats"]

_log = logging.getLogger("sluice.handles")

#: ``running`` writes remembered for folding (beyond it, the ones already sent are forgotten)
_MAX_STARTS = 4096
_MAX_INFO_HEADS = 1024  # cached info heads, one per (task, queue)


@dataclass(slots=True)
class _Start:
    """A ``running`` write of ``attempt``/``generation`` of the task ``msg_id`` started at ``at`` (monotonic
    seconds); ``entry`` is its place in the batch (set once queued). The write itself is built only if
    it leaves before the attempt ends (else the end stands for it): from these fields, at that moment."""

    msg_id: str
    attempt: int
    generation: int
    at: float
    task: str
    queue: str
    published_ms: int | None
    entry: Queued | None = None


@dataclass(slots=True)
class TrackerStats:
    """Counters of one Tracker: ``writes`` sent, of which ``applied`` and ``ignored`` (older than the
    stored state), ``failed`` (Redis did not answer) and ``dropped`` (not sent: Redis was down)."""

    writes: int = 0
    applied: int = 0
    ignored: int = 0
    failed: int = 0
    dropped: int = 0

    @property
    def failures(self) -> int:
        """Writes that did not reach Redis (failed or dropped)."""
        return self.failed + self.dropped


class Tracker(CoalescingClient):
    """State writes for the tasks a worker runs. ``worker`` ("host:pid") is recorded with each write;
    ``ttl`` is how long an ended task's record is kept (``result_ttl``, if given, instead when a result is
    stored); ``telemetry``, if given, is called with ``"applied"``, ``"ignored"``, ``"failed"`` or
    ``"dropped"`` for each write."""

    def __init__(
        self,
        redis: AnyRedis,
        prefix: str = "sluice",
        *,
        worker: str,
        clock: Clock = SYSTEM,
        ttl: float = 86400.0,
        result_ttl: float | None = None,
        telemetry: Callable[[str], None] | None = None,
        logger: logging.Logger | None = None,
        timeout: float = 0.5,
        running_after: float = 0.0,
    ) -> None:
        if not ttl > 0 or (result_ttl is not None and not result_ttl > 0):
            raise ConfigError("ttl and result_ttl must be positive")
        if not running_after >= 0:
            raise ConfigError(f"running_after must be 0 or more seconds, not {running_after!r}")
        self._keys = HandleKeys(prefix)
        self._clock = clock
        self._now = clock.monotonic
        self.worker = worker
        self.ttl = ttl
        self.result_ttl = result_ttl
        self.stats = TrackerStats()
        self._telemetry = telemetry
        self._runner = ScriptRunner(redis, timeout=timeout)
        # no linger: measured, a 2 ms linger (16 writes a batch instead of 7) cost the worker more CPU a
        # task (133 against 123 us), not less
        self._batches = self._coalescer = Coalescer(self._runner, max_inflight=1, multi=_lua.MULTI)
        self._outage = OutageMonitor("Tracker", FailOpen(), clock=clock.monotonic, logger=logger or _log)
        self._starts: dict[str, _Start] = {}
        self.running_after = running_after
        self._held: deque[_Start] = deque()  # starts not queued yet, oldest first
        self._timer: asyncio.TimerHandle | None = None
        self._info_heads: dict[tuple[str | None, str | None], str] = {}
        # the fields of a running write and of a plain success: the same for every task, encoded once
        self._running_fields = encode_fields({"worker": worker, "reason": "", "next": ""})
        self._ended_fields = encode_fields({"worker": worker, "reason": "", "next": "", "result_error": ""})

    @property
    def in_outage(self) -> bool:
        return self._outage.stats.in_outage

    def running(
        self,
        msg_id: str,
        *,
        task: str,
        queue: str,
        attempt: int,
        generation: int = 0,
        published_ms: int | None = None,
    ) -> None:
        """The delivery was admitted and its handler starts (write it after the steps that may defer)."""
        if not self._outage.should_try():
            self._drop(1)
            return
        starts = self._starts
        if len(starts) >= _MAX_STARTS:  # attempts that never ended here (a delivery given back)
            for key in [k for k, v in starts.items() if v.entry is not None and v.entry.sent]:
                del starts[key]
        start = starts[msg_id] = _Start(msg_id, attempt, generation, self._now(), task, queue, published_ms)
        if self.running_after > 0:
            self._held.append(start)
            if self._timer is None:
                self._arm(self.running_after)
        else:
            self._queue_start(start)

    def _queue_start(self, start: _Start) -> None:
        self.stats.writes += 1
        start.entry = self._batches.queue(partial(self._leave, start))

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self, everything: bool = False) -> None:
        """Queue the held starts whose ``running_after`` has passed (``everything``: all of them) and
        whose attempt has not ended; re-arm the timer for the next one held."""
        self._timer = None
        held, starts = self._held, self._starts
        due = self._now() - self.running_after
        while held:
            start = held[0]
            if not everything and start.at > due:
                # (no sooner than an eighth of running_after: a few timers a period, not one a task)
                self._arm(max(start.at - due, self.running_after / 8))
                return
            held.popleft()
            if starts.get(start.msg_id) is start and start.entry is None:  # still running, not folded
                self._queue_start(start)

    def deferred(
        self,
        msg_id: str,
        *,
        attempt: int,
        generation: int = 0,
        reason: str,
        next_run_ms: int | None,
        task: str | None = None,
        queue: str | None = None,
        published_ms: int | None = None,
    ) -> None:
        """Sent back for later without spending an attempt (rate limit, breaker, concurrency, eta)."""
        self._starts.pop(msg_id, None)
        fields = {"worker": self.worker, "reason": reason, "next": _opt(next_run_ms) or ""}
        info = self._info(task, queue, published_ms)
        self._fire(self._write(msg_id, State.DEFERRED, attempt, generation, reason, fields, info))

    def retrying(
        self,
        msg_id: str,
        *,
        attempt: int,
        generation: int = 0,
        error: ErrorInfo,
        next_run_ms: int | None,
        task: str | None = None,
        queue: str | None = None,
        published_ms: int | None = None,
    ) -> None:
        """Attempt ``attempt`` failed with ``error``; the next one runs at ``next_run_ms``."""
        fields = {
            "worker": self.worker,
            "etype": error.type,
            "emsg": error.message,
            "next": _opt(next_run_ms) or "",
            "reason": "",
        }
        info = self._info(task, queue, published_ms)
        detail = f"{error.type}: {error.message[:200]}"
        start = self._fold(msg_id, attempt, generation)
        ran = None if start is None else self._ran_ms(start)
        call = self._write(msg_id, State.RETRYING, attempt, generation, detail, fields, info, ran_ms=ran)
        if start is not None and start.entry is not None:
            self._replace(start, call).add_done_callback(self._done)  # (the start's is never built)
        else:  # (a held start is never queued: the retry stands for it)
            self._fire(call)

    async def ended(
        self,
        msg_id: str,
        *,
        state: State,
        attempt: int,
        generation: int = 0,
        error: ErrorInfo | None = None,
        reason: str | None = None,
        result_json: bytes | None = None,
        result_error: str | None = None,
        unique_key: str | None = None,
        unique_release: UniqueRelease | str = "end",
        ttl: float | None = None,
        task: str | None = None,
        queue: str | None = None,
        published_ms: int | None = None,
    ) -> None:
        """The terminal write (+ its notification, TTL and the unique key's release), awaited; never raises
        but the caller's own cancellation. ``ttl`` overrides the record's time to live for this task."""
        if state not in TERMINAL:
            raise ConfigError(f"ended() takes a terminal state, not {state}")
        fields: dict[str, str] | str = self._ended_fields
        if reason or result_error or error is not None:
            fields = {
                "worker": self.worker,
                "reason": reason or "",
                "next": "",
                "result_error": result_error or "",
            }
            if error is not None:
                fields["etype"], fields["emsg"] = error.type, error.message
        if ttl is None:
            ttl = self.result_ttl if result_json is not None and self.result_ttl is not None else self.ttl
        detail = reason or (error.type if error is not None else None)
        info = self._info(task, queue, published_ms)
        result = b"" if result_json is None else result_json
        start = self._fold(msg_id, attempt, generation)
        ran = None if start is None else self._ran_ms(start)
        write = self._write(msg_id, state, attempt, generation, detail, fields, info, ttl, result, ran)
        calls: list[Call] = []
        futures: list[asyncio.Future[Any]] = []
        if start is not None and start.entry is not None:  # the queued start becomes this write
            futures.append(self._replace(start, write))  # (it goes out in any case)
        else:  # (a held start is never queued: this write stands for it)
            calls.append(write)
        if unique_key and (
            unique_release == "end" or (unique_release == "success" and state is State.SUCCEEDED)
        ):
            calls.append((_lua.UNIQUE_RELEASE, [self._keys.unique(unique_key)], [msg_id]))
        if calls and not self._outage.should_try():
            self._drop(len(calls))
            calls = []
        for call in calls:
            self.stats.writes += 1
            futures.append(self._batches.queue(call).fut)
        for fut in futures:  # counted here, once it answered; only our own cancellation goes up
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done():  # the write answered, we are cancelled: count it all the same
                    self._done(fut)
                else:  # (it still goes out, and is counted when it answers)
                    fut.add_done_callback(self._done)
                raise
            except Exception:  # failed writes are counted and logged by _done
                pass
            self._done(fut)

    def _info(self, task: str | None, queue: str | None, published_ms: int | None) -> str:
        """The info fields' JSON (the task's name, queue, publish time), its constant head cached."""
        heads = self._info_heads
        head = heads.get((task, queue))
        if head is None:
            if len(heads) >= _MAX_INFO_HEADS:  # a (task, queue) pair each: few in any real fleet
                heads.clear()
            named = {k: v for k, v in (("task", task), ("queue", queue)) if v is not None}
            head = heads[(task, queue)] = encode_fields(named)[:-1]
        if published_ms is None:
            return head + "}"
        return f'{head}{"," if len(head) > 1 else ""}"published":"{published_ms}"}}'

    def _fold(self, msg_id: str, attempt: int, generation: int) -> _Start | None:
        """The attempt's ``running`` write if it has not left yet, held or queued (the later write takes
        its place)."""
        start = self._starts.pop(msg_id, None)
        if (
            start is None
            or (start.entry is not None and start.entry.sent)
            or start.attempt != attempt
            or start.generation != generation
        ):
            return None
        return start

    def _ran_ms(self, start: _Start) -> int:
        return round((self._now() - start.at) * 1000)

    def _write(
        self,
        msg_id: str,
        state: State,
        attempt: int,
        generation: int,
        detail: str | None,
        fields: dict[str, str] | str,
        info: str,
        ttl: float = LIVE_TTL,
        result: bytes | None = None,
        ran_ms: int | None = None,
    ) -> Call:
        return write_call(
            self._keys,
            msg_id,
            state,
            generation=generation,
            attempt=attempt,
            ttl=ttl,
            detail=detail,
            fields=fields,
            info=info,
            result=result,
            ran_ms=ran_ms,
        )

    def _fire(self, call: Call) -> None:
        """Queue a write nobody awaits: counted by a callback when it answers."""
        if not self._outage.should_try():
            self._drop(1)
            return
        self.stats.writes += 1
        self._batches.queue(call).fut.add_done_callback(self._done)

    def _leave(self, start: _Start) -> Call:
        """A ``running`` write leaving before its attempt ended: built now, counted when it answers."""
        assert start.entry is not None
        start.entry.fut.add_done_callback(self._done)
        info = self._info(start.task, start.queue, start.published_ms)
        return self._write(
            start.msg_id,
            State.RUNNING,
            start.attempt,
            start.generation,
            self.worker,
            self._running_fields,
            info,
        )

    @staticmethod
    def _replace(start: _Start, call: Call) -> asyncio.Future[Any]:
        """A later write takes the place of the unsent ``start`` (the same entry, its future: one write)."""
        assert start.entry is not None
        start.entry.call = call
        return start.entry.fut

    def _drop(self, n: int) -> None:
        self.stats.dropped += n
        self._outage.fell_back()
        for _ in range(n):
            self._count("dropped")

    def _done(self, fut: asyncio.Future[Any]) -> None:
        exc: BaseException | None = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            self.stats.failed += 1
            self._outage.failed(exc)
            self._count("failed")
            return
        self._outage.succeeded()
        if fut.result() == 0:
            self.stats.ignored += 1
            self._count("ignored")
        else:
            self.stats.applied += 1
            self._count("applied")

    def _count(self, what: str) -> None:
        if self._telemetry is not None:
            self._telemetry(what)

    async def aclose(self) -> None:
        """Queue the starts still held, send what is queued and wait for it (bounded by the write
        timeout), then let go of connections."""
        if self._timer is not None:
            self._timer.cancel()
        self._release(everything=True)
        await super().aclose()


def _opt(value: int | None) -> str | None:
    return None if value is None else str(value)
