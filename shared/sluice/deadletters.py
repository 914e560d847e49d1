"""The dead-letter queue as a tool: list, show, replay and purge what the workers could not run.

Browsing takes messages with ``basic.get`` without acking them and gives back what it does not consume
(``nack`` with requeue), so a listing removes nothing. Replay republishes a dead letter to its work queue
with the attempt count reset and waits for the broker's confirm *before* it acks (removes) the dead
copy: a crash in the middle leaves the dead letter in place, so the worst case is a duplicate (which an
idempotency key absorbs), never a loss.

A tracked task (its dead letter has ``x-sluice-track``, or Redis holds a record of its id) becomes
``queued`` again when it is replayed (:meth:`sluice.handles.TaskHandles.replayed`: generation + 1, history
kept), before its copy is published; the copy carries the new generation in ``x-sluice-generation``, so the
worker's writes for it count over the dead ones (docs/tasks.md). Cost: one status read (when the header
does not say it is tracked) and one write per replayed dead letter; none for a dry run. Redis down: the
replay goes on (fail open), the copy's generation is the dead letter's + 1 when its header says it is
tracked, and the report lists it in ``untracked``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from sluice._closing import AsyncClosing
from sluice.connection import BROKER_ERRORS, connect
from sluice.errors import BrokerUnavailable, SluiceError
from sluice.handles import State, TaskHandles, TrackingUnavailable
from sluice.protocol import (
    H_ATTEMPT,
    H_DEAD_AT,
    H_DEAD_DETAIL,
    H_DEAD_QUEUE,
    H_DEAD_REASON,
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_ETA,
    H_FIRST_FAILURE_AT,
    H_GENERATION,
    H_LAST_FAILURE_AT,
    H_QUEUE,
    H_TASK,
    H_TRACEBACK,
    H_TRACK,
    TaskMessage,
)
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology

__all__ = ["DeadLetter", "DeadLetterQueue", "ReplayReport"]

H_REPLAYS = "x-sluice-replays"  # how many times this task was replayed from the DLQ
_DROP_ON_REPLAY = {H_DEAD_REASON, H_DEAD_DETAIL, H_DEAD_AT, H_DEAD_QUEUE, "x-death", "x-delivery-count"}
_DROP_ON_REPLAY |= {"x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"}
_DROP_ON_REPLAY |= {"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason"}
# the last failure's details and the due time: a replay runs now, afresh
_DROP_ON_REPLAY |= {H_ERROR_TYPE, H_ERROR_MESSAGE, H_TRACEBACK, H_FIRST_FAILURE_AT, H_LAST_FAILURE_AT, H_ETA}


def _text(v: Any) -> str | None:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v if isinstance(v, str) else None


def _ms(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter queue, as read from its headers."""

    id: str
    task: str | None
    queue: str | None
    reason: str
    detail: str
    dead_at_ms: int | None
    attempt: int | None
    headers: Mapping[str, Any] = field(repr=False)
    body: bytes = field(repr=False)
    # the last handler failure, when a handler failed (x-sluice-error-type, ...)
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = field(default=None, repr=False)
    first_failure_ms: int | None = None
    last_failure_ms: int | None = None

    @classmethod
    def from_message(cls, m: AbstractIncomingMessage, topology: Topology) -> DeadLetter:
        h = dict(m.headers or {})
        reason = _text(h.get(H_DEAD_REASON))
        detail = _text(h.get(H_DEAD_DETAIL)) or ""
        queue = _text(h.get(H_DEAD_QUEUE)) or _text(h.get(H_QUEUE))
        deaths = h.get("x-death")
        if reason is None and isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
            # dead-lettered by the broker itself (delivery limit, rejected, expired)
            first = deaths[0]
            reason = _text(first.get("reason")) or "unknown"
            rq = _text(first.get("queue")) or ""
            if queue is None and rq.startswith(f"{topology.prefix}.q."):
                queue = rq.removeprefix(f"{topology.prefix}.q.")
            detail = detail or f"dead-lettered by RabbitMQ from {rq or '?'}: {reason}"
        dead_at = h.get(H_DEAD_AT)
        attempt = h.get(H_ATTEMPT)
        return cls(
            id=m.message_id or "",
            task=_text(h.get(H_TASK)),
            queue=queue,
            reason=reason or "unknown",
            detail=detail,
            dead_at_ms=dead_at if isinstance(dead_at, int) else None,
            attempt=attempt if isinstance(attempt, int) else None,
            headers=h,
            body=m.body,
            error_type=_text(h.get(H_ERROR_TYPE)),
            error_message=_text(h.get(H_ERROR_MESSAGE)),
            traceback=_text(h.get(H_TRACEBACK)),
            first_failure_ms=_ms(h.get(H_FIRST_FAILURE_AT)),
            last_failure_ms=_ms(h.get(H_LAST_FAILURE_AT)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "detail": self.detail,
            "dead_at_ms": self.dead_at_ms,
            "attempt": self.attempt,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "first_failure_ms": self.first_failure_ms,
            "last_failure_ms": self.last_failure_ms,
            "headers": {k: _jsonable(v) for k, v in self.headers.items()},
            "body": self.body.decode(errors="replace"),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


@dataclass(slots=True)
class ReplayReport:
    replayed: list[DeadLetter] = field(default_factory=list)
    skipped_no_queue: list[DeadLetter] = field(default_factory=list)
    failed: list[tuple[DeadLetter, SluiceError]] = field(default_factory=list)
    # replayed, but their tracking record could not be set back to queued (Redis unavailable)
    untracked: list[tuple[DeadLetter, SluiceError]] = field(default_factory=list)


Selector = Callable[[DeadLetter], bool]


class DeadLetterQueue(AsyncClosing):
    """An async context manager over ``{prefix}.dlq``: its own connection and channels.

    ``handles``: the task handles replays update (default: made on first need, on a Redis client of its
    own from ``settings.redis_url``, closed with this object).
    """

    def __init__(
        self, settings: Settings, *, scan_limit: int = 100_000, handles: TaskHandles | None = None
    ) -> None:
        self.settings = settings
        self._handles = handles
        self._redis: Any = None  # the client made for the handles, if this object made them
        self.topology = Topology.from_settings(settings)
        self.scan_limit = scan_limit
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._publisher: Publisher | None = None

    async def __aenter__(self) -> Self:
        self._conn = await connect(self.settings, "sluice-dlq")
        try:
            self._channel = await self._conn.channel()
            await self.topology.declare_base(self._channel)
            self._queue = await self._channel.declare_queue(
                self.topology.dead_queue, durable=True, arguments=self.topology.dead_queue_arguments()
            )
        except BROKER_ERRORS as e:
            await self.aclose()
            raise BrokerUnavailable(f"cannot open the dead-letter queue: {e}") from None
        return self

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            if self._handles is not None:
                await self._handles.aclose()
            await redis.aclose()
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None
        if self._conn is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._conn.close()
            self._conn = None

    def _q(self) -> AbstractQueue:
        if self._queue is None:
            raise BrokerUnavailable("dead-letter queue is not open")
        return self._queue

    async def count(self) -> int:
        declared = await self._q().channel.declare_queue(self.topology.dead_queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def _take(self, limit: int | None) -> list[AbstractIncomingMessage]:
        """Take up to ``limit`` (or scan_limit) messages unacked; the caller must settle each."""
        out: list[AbstractIncomingMessage] = []
        cap = min(limit, self.scan_limit) if limit is not None else self.scan_limit
        q = self._q()
        while len(out) < cap:
            m = await q.get(no_ack=False, fail=False, timeout=self.settings.publish_timeout)
            if m is None:
                break
            out.append(m)
        return out

    async def _give_back(self, messages: list[AbstractIncomingMessage]) -> None:
        for m in messages:
            with contextlib.suppress(*BROKER_ERRORS):
                await m.nack(requeue=True)

    async def browse(self, select: Selector | None = None, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters that ``select`` accepts (all by default), oldest first, at most ``limit``."""
        taken = await self._take(None)
        try:
            found = [DeadLetter.from_message(m, self.topology) for m in taken]
            found = [d for d in found if select is None or select(d)]
            return found[:limit] if limit is not None else found
        finally:
            await self._give_back(taken)

    async def replay(self, select: Selector, *, dry_run: bool = False) -> ReplayReport:
        """Republish every selected dead letter to its work queue (attempt 1), then remove it."""
        report = ReplayReport()
        taken = await self._take(None)
        keep: list[AbstractIncomingMessage] = []
        try:
            for m in taken:
                d = DeadLetter.from_message(m, self.topology)
                if not select(d):
                    keep.append(m)
                    continue
                if d.queue is None or d.task is None:
                    report.skipped_no_queue.append(d)
                    keep.append(m)
                    continue
                if dry_run:
                    report.replayed.append(d)
                    keep.append(m)
                    continue
                try:
                    await self._republish(d, report)
                except SluiceError as e:
                    report.failed.append((d, e))
                    keep.append(m)
                    continue
                await m.ack()  # only after the broker confirmed the replayed copy
                report.replayed.append(d)
        except BaseException:
            # whatever was not settled goes back: at worst a duplicate, never a loss
            keep.extend(m for m in taken if m not in keep and not m.processed)
            raise
        finally:
            await self._give_back(keep)
        return report

    def _task_handles(self) -> TaskHandles:
        if self._handles is None:
            from sluice.redis_client import redis_client

            self._redis = redis_client(self.settings, socket_timeout=5.0, socket_connect_timeout=3.0)
            self._handles = TaskHandles(self._redis, self.settings.prefix, ttl=self.settings.track_ttl)
        return self._handles

    async def _replayed(self, d: DeadLetter, report: ReplayReport) -> int | None:
        """The tracked task queued again: its new generation; None if it is not tracked."""
        by_header = H_TRACK in d.headers or H_GENERATION in d.headers
        handles = self._task_handles()
        try:
            if not by_header and (await handles.status(d.id)).state is State.UNKNOWN:
                return None
            return await handles.replayed(d.id)
        except TrackingUnavailable as e:
            report.untracked.append((d, e))
            if not by_header:
                return None
            gen = d.headers.get(H_GENERATION)
            return (gen if isinstance(gen, int) and not isinstance(gen, bool) else 0) + 1

    async def _republish(self, d: DeadLetter, report: ReplayReport) -> None:
        if self._publisher is None:
            self._publisher = Publisher(self.settings, connection=self._conn, name="sluice-dlq-replay")
            await self._publisher.__aenter__()
        headers = {k: v for k, v in d.headers.items() if k not in _DROP_ON_REPLAY}
        replays = headers.get(H_REPLAYS)
        headers[H_REPLAYS] = (replays if isinstance(replays, int) else 0) + 1
        generation = await self._replayed(d, report)
        if generation is not None:
            headers[H_GENERATION] = generation
        msg = TaskMessage(task=d.task or "", payload={}, id=d.id, queue=d.queue or "", attempt=1)
        props = self._publisher.properties(msg)
        props.headers = {**headers, H_ATTEMPT: 1}
        props.timestamp = None
        await self._publisher.ensure_queue(msg.queue)
        await self._publisher.publish_properties(d.body, msg.queue, props)

    async def purge(self) -> int:
        """Remove every dead letter; returns how many."""
        result = await self._q().purge()
        return int(result.message_count or 0)
