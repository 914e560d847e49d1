"""Process-side telemetry: counters and histograms kept in memory, sent as one snapshot a second.

A worker or producer records what happens into a :class:`Telemetry` (a few dict and list updates per
task, no I/O); a :class:`SnapshotPublisher` sends the whole state as ONE message every ``interval``
seconds to the topic exchange ``{prefix}.metrics`` (routing key ``{kind}.{host}``). The metrics service
merges the snapshots per process. Counters in a snapshot are cumulative since the process started, so a
lost snapshot loses nothing; ``instance`` (random per process), ``started`` and ``seq`` let the service
tell a restart or a counter reset from a late message. With ``SLUICE_METRICS_ENABLED=false``
:func:`telemetry_for` gives a :class:`NullTelemetry` whose methods do nothing and no snapshot is sent.

The worker calls, once per delivery it carries out::

    telemetry.task_done(task, outcome, queue=q, run_seconds=r, wait_seconds=w)

with ``outcome`` one of :data:`OUTCOMES`, and ``telemetry.handle_event(event)`` for the task handles
(:data:`HANDLE_EVENTS`: a tracked task ended, a result stored or refused, a state write that did not
reach Redis; a cancel honoured is the ``cancelled`` outcome). Task labels are capped at :data:`MAX_TASK_LABELS` distinct
names per process (the rest count as ``_other``), so labels stay bounded whatever the messages say.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from sluice.connection import BROKER_ERRORS, connect
from sluice.errors import BrokerUnavailable, ConfigError
from sluice.settings import Settings

__all__ = [
    "CANCELLED",
    "DEAD_LETTERED",
    "DEDUPLICATED_METRIC",
    "DEFERRED",
    "DEFERRED_BREAKER",
    "DEFERRED_LIMIT",
    "FAILED",
    "HANDLE_EVENTS",
    "MAX_TASK_LABELS",
    "OTHER",
    "OUTCOMES",
    "PAUSE_REASONS",
    "RESULTS_REFUSED",
    "RESULTS_STORED",
    "RETRIED",
    "RUN_BUCKETS",
    "SNAPSHOT_VERSION",
    "SUCCESS",
    "TRACKED",
    "TRACKING_FAILURES",
    "WAIT_BUCKETS",
    "Histogram",
    "NullTelemetry",
    "SnapshotPublisher",
    "Telemetry",
    "declare_metrics_exchange",
    "metrics_exchange",
    "telemetry_for",
]

log = logging.getLogger("sluice.telemetry")

SNAPSHOT_VERSION: Final = 1
# The outcomes a worker counts (the vocabulary of the snapshots, the metrics service and its live page).
# Each is the ``metric`` of an outcome of the worker's model (sluice_worker.outcome, which says which
# outcome and reason is counted under which name; docs/metrics.md lists them): the handler ran fine; it
# failed for good (dead-lettered); it failed and was scheduled again; the message could not run at all
# (bad message, unknown task, bad payload: dead-lettered); skipped as a duplicate; put off by a rate or
# concurrency limit / an open breaker / anything else (a delayed task's hop, a duplicate still running,
# Redis down); cancelled (sluice task cancel: before it ran or while it ran).
SUCCESS: Final = "success"
FAILED: Final = "failed"
RETRIED: Final = "retried"
DEAD_LETTERED: Final = "dead_lettered"
DEDUPLICATED_METRIC: Final = "deduplicated"
DEFERRED_LIMIT: Final = "deferred_limit"
DEFERRED_BREAKER: Final = "deferred_breaker"
DEFERRED: Final = "deferred"
CANCELLED: Final = "cancelled"
OUTCOMES: Final = (
    SUCCESS,
    FAILED,
    RETRIED,
    DEAD_LETTERED,
    DEDUPLICATED_METRIC,
    DEFERRED_LIMIT,
    DEFERRED_BREAKER,
    DEFERRED,
    CANCELLED,
)
_OUTCOME_SET: Final = frozenset(OUTCOMES)
# The task handles' counters (docs/metrics.md, sluice_task_handle_events_total): a tracked task ended (its
# final state written), a result stored, a result refused (too large, not serialisable), a state write
# that did not reach Redis (tracking fails open: the task ran all the same).
TRACKED: Final = "tracked"
RESULTS_STORED: Final = "results_stored"
RESULTS_REFUSED: Final = "results_refused"
TRACKING_FAILURES: Final = "tracking_failures"
HANDLE_EVENTS: Final = (TRACKED, RESULTS_STORED, RESULTS_REFUSED, TRACKING_FAILURES)
_HANDLE_SET: Final = frozenset(HANDLE_EVENTS)
# Why a worker paused a queue's consumer (sluice_consumer_pauses_total): the deferral reasons of the worker's
# outcome model that can block every task of a queue (an open breaker, a frozen limit; sluice_worker.pauses)
PAUSE_REASONS: Final = ("breaker_open", "throttled")
# histogram bucket upper bounds, seconds
RUN_BUCKETS: Final = tuple(m * 10.0**e for e in range(-3, 2) for m in (1, 2.5, 5))  # 1 ms .. 50 s
WAIT_BUCKETS: Final = (
    *(m * 10.0**e for e in range(-2, 3) for m in (1, 2.5, 5)),
    900.0,
    3600.0,
)  # 10 ms .. 1 h
MAX_TASK_LABELS: Final = 200
OTHER: Final = "_other"
_MAX_NAMES: Final = 100  # distinct queues / limits / budgets per process
_SEND_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, TimeoutError, *BROKER_ERRORS)


def metrics_exchange(prefix: str) -> str:
    return f"{prefix}.metrics"


async def declare_metrics_exchange(channel: aio_pika.abc.AbstractChannel, prefix: str) -> AbstractExchange:
    """The topic exchange snapshots go to. Transient: snapshots are worth nothing after a broker restart,
    and every process declares it again when it reconnects, so no exchange outlives its users' broker."""
    return await channel.declare_exchange(
        metrics_exchange(prefix), aio_pika.ExchangeType.TOPIC, durable=False
    )


class Histogram:
    """Fixed buckets (upper bounds, ``le``); counts per bucket (the last one is +Inf), sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def dump(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}


class Telemetry:
    """The counters of one process. Not thread-safe: call it from the event loop."""

    enabled = True

    def __init__(self, kind: str, *, max_tasks: int = MAX_TASK_LABELS) -> None:
        self.kind = kind
        self.instance = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = time.time()
        self._seq = 0
        self._max_tasks = max_tasks
        self._tasks: set[str] = set()
        self._done: dict[tuple[str, str], int] = {}
        self._run: dict[str, Histogram] = {}
        self._wait: dict[str, Histogram] = {}
        self._last_wait: dict[str, tuple[float, float]] = {}  # queue -> (wall time, wait)
        self._published: dict[str, int] = {}
        self._limits: dict[tuple[str, str], int] = {}
        self._limit_wait: dict[str, Histogram] = {}
        self._budget: dict[str, int] = {}
        self._throttles: dict[str, int] = {}
        self._pauses: dict[tuple[str, str], int] = {}  # (queue, reason): consumers paused
        self._handles: dict[str, int] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    # ---- recording (the hot path)
    def task_done(
        self,
        task: str,
        outcome: str,
        *,
        queue: str | None = None,
        run_seconds: float | None = None,
        wait_seconds: float | None = None,
    ) -> None:
        """Count one delivery carried out; ``outcome`` is one of :data:`OUTCOMES`.

        ``run_seconds``: time in the handler; ``wait_seconds``: from the message's creation to its start.
        """
        key = (task, outcome)
        n = self._done.get(key)
        if n is None:
            if outcome not in _OUTCOME_SET:
                raise ConfigError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
            if task not in self._tasks:
                if len(self._tasks) >= self._max_tasks:
                    task = OTHER
                    key = (task, outcome)
                else:
                    self._tasks.add(task)
            n = self._done.get(key, 0)
        self._done[key] = n + 1
        if run_seconds is not None:
            h = self._run.get(task)
            if h is None:
                h = self._run[task] = Histogram(RUN_BUCKETS)
            h.observe(run_seconds)
        if wait_seconds is not None and queue is not None:
            w = self._wait.get(queue)
            if w is None:
                if len(self._wait) >= _MAX_NAMES:
                    return
                w = self._wait[queue] = Histogram(WAIT_BUCKETS)
            w.observe(wait_seconds)
            self._last_wait[queue] = (time.time(), wait_seconds)

    def published(self, queue: str, n: int = 1) -> None:
        """Count ``n`` tasks published (confirmed) to ``queue``."""
        if queue in self._published or len(self._published) < _MAX_NAMES:
            self._published[queue] = self._published.get(queue, 0) + n

    def limit_decision(self, limit: str, allowed: bool, wait_seconds: float | None = None) -> None:
        """Count one rate-limit decision for ``limit``; ``wait_seconds``: how long it made the task wait."""
        key = (limit, "allowed" if allowed else "deferred")
        if key in self._limits or len(self._limits) < 2 * _MAX_NAMES:
            self._limits[key] = self._limits.get(key, 0) + 1
            if wait_seconds is not None:
                h = self._limit_wait.get(limit)
                if h is None:
                    h = self._limit_wait[limit] = Histogram(WAIT_BUCKETS)
                h.observe(wait_seconds)

    def budget_refused(self, budget: str) -> None:
        """Count one retry the retry budget ``budget`` refused."""
        if budget in self._budget or len(self._budget) < _MAX_NAMES:
            self._budget[budget] = self._budget.get(budget, 0) + 1

    def throttled(self, scope: str) -> None:
        """Count one throttle an upstream answered (a handler raised ``sluice.Throttled``), by the key or
        scope it froze."""
        if scope in self._throttles or len(self._throttles) < _MAX_NAMES:
            self._throttles[scope] = self._throttles.get(scope, 0) + 1

    def consumer_paused(self, queue: str, reason: str) -> None:
        """Count one pause of ``queue``'s consumer: every task it carries is blocked by ``reason``
        (``breaker_open``, ``throttled``). Whether it is paused now is the gauge ``consumers_paused:QUEUE``."""
        key = (queue, reason)
        if key in self._pauses or len(self._pauses) < _MAX_NAMES:
            self._pauses[key] = self._pauses.get(key, 0) + 1

    def handle_event(self, event: str, n: int = 1) -> None:
        """Count ``n`` task-handle events, ``event`` one of :data:`HANDLE_EVENTS`."""
        if event not in _HANDLE_SET:
            raise ConfigError(f"unknown task-handle event {event!r}; use one of {', '.join(HANDLE_EVENTS)}")
        self._handles[event] = self._handles.get(event, 0) + n

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as gauge ``name`` in every snapshot (e.g. ``in_progress``), read once a second."""
        self._gauges[name] = read

    # ---- the snapshot
    def snapshot(self, *, final: bool = False) -> dict[str, Any]:
        """Everything so far, as a JSON-able dict (see docs/metrics.md, "Snapshots")."""
        self._seq += 1
        gauges: dict[str, float] = {}
        for name, read in self._gauges.items():
            try:
                gauges[name] = float(read())
            except Exception:  # a gauge callback must not stop the snapshots
                log.debug("gauge %s failed", name, exc_info=True)
        return {
            "v": SNAPSHOT_VERSION,
            "kind": self.kind,
            "instance": self.instance,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "seq": self._seq,
            "at": time.time(),
            "final": final,
            "done": [[t, o, n] for (t, o), n in self._done.items()],
            "run": {t: h.dump() for t, h in self._run.items()},
            "wait": {q: h.dump() for q, h in self._wait.items()},
            "last_wait": {q: [at, w] for q, (at, w) in self._last_wait.items()},
            "published": dict(self._published),
            "limits": [[n, d, c] for (n, d), c in self._limits.items()],
            "limit_wait": {n: h.dump() for n, h in self._limit_wait.items()},
            "budget_refused": dict(self._budget),
            "throttles": dict(self._throttles),
            "pauses": [[q, r, n] for (q, r), n in self._pauses.items()],
            "handles": dict(self._handles),
            "gauges": gauges,
        }


class NullTelemetry:
    """Telemetry switched off: every call does nothing."""

    enabled = False
    kind = "off"

    def task_done(
        self,
        task: str,
        outcome: str,
        *,
        queue: str | None = None,
        run_seconds: float | None = None,
        wait_seconds: float | None = None,
    ) -> None:
        pass

    def published(self, queue: str, n: int = 1) -> None:
        pass

    def limit_decision(self, limit: str, allowed: bool, wait_seconds: float | None = None) -> None:
        pass

    def budget_refused(self, budget: str) -> None:
        pass

    def throttled(self, scope: str) -> None:
        pass

    def consumer_paused(self, queue: str, reason: str) -> None:
        pass

    def handle_event(self, event: str, n: int = 1) -> None:
        pass

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        pass


def telemetry_for(settings: Settings, kind: str) -> Telemetry | NullTelemetry:
    """A :class:`Telemetry` for a process of ``kind`` (worker, producer), or a no-op one if metrics are off."""
    return Telemetry(kind) if settings.metrics_enabled else NullTelemetry()


class SnapshotPublisher:
    """Sends ``telemetry``'s snapshot every ``interval`` seconds while inside ``async with``.

    Runs on its own connection, so it never slows the caller's channels; a broker outage only skips
    snapshots (the robust connection comes back by itself). On exit one last snapshot marked ``final``
    tells the service the process stopped on purpose. With a :class:`NullTelemetry` it does nothing.
    """

    def __init__(
        self, settings: Settings, telemetry: Telemetry | NullTelemetry, *, interval: float = 1.0
    ) -> None:
        if interval <= 0:
            raise ConfigError("interval must be positive")
        self._settings = settings
        self._telemetry = telemetry
        self._interval = interval
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self.sent = 0

    async def __aenter__(self) -> Self:
        if isinstance(self._telemetry, Telemetry):
            self._task = asyncio.create_task(self._loop(self._telemetry), name="sluice-telemetry")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if isinstance(self._telemetry, Telemetry):  # a short run (a CLI publish) may not have connected yet
            with contextlib.suppress(*_SEND_ERRORS):
                async with asyncio.timeout(2.0):
                    if self._exchange is None:
                        await self._open(self._telemetry)
                    await self._send(self._telemetry, final=True)
        conn, self._connection = self._connection, None
        if conn is not None:
            with contextlib.suppress(TimeoutError, *BROKER_ERRORS):
                async with asyncio.timeout(2.0):
                    await conn.close()

    async def _loop(self, telemetry: Telemetry) -> None:
        while True:
            try:
                if self._exchange is None:
                    await self._open(telemetry)
                await self._send(telemetry)
                self._warned = False
            except _SEND_ERRORS as e:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot send metrics snapshots (%s); retrying", e)
            await asyncio.sleep(self._interval)

    async def _open(self, telemetry: Telemetry) -> None:
        s = self._settings
        if self._connection is None:
            self._connection = await connect(s, f"sluice-telemetry {telemetry.kind}")
        channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await declare_metrics_exchange(channel, s.prefix)

    async def _send(self, telemetry: Telemetry, *, final: bool = False) -> None:
        assert self._exchange is not None
        body = json.dumps(telemetry.snapshot(final=final), separators=(",", ":")).encode()
        message = aio_pika.Message(
            body,
            content_type="application/json",
            type="sluice.telemetry.v1",
            expiration=10,  # a snapshot nobody read within 10 s is worthless
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        async with asyncio.timeout(max(self._interval, 1.0)):
            await self._exchange.publish(
                message, routing_key=f"{telemetry.kind}.{telemetry.host}", mandatory=False
            )
        self.sent += 1
