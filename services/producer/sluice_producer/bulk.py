"""Publishing many tasks: a list for the HTTP batch endpoint, a stream for ``sluice publish``.

Both go through :meth:`sluice.publisher.Publisher.publish_many` (a window of confirms in flight).

* :func:`publish_all` (a list, the HTTP API): stops feeding after the first broker-level failure and
  marks the rest as not attempted, so a dead broker costs one timeout, not one per window; a request
  never waits for a broker to come back.
* :func:`publish_stream` (``sluice publish``): items are taken from the input as the window frees,
  outcomes are reported in input order as they are confirmed, and only what is in flight (and a bounded
  list of failures) is kept, whatever the input's length. A broker outage pauses it: the unconfirmed
  tasks are published again once the connection is back, unless the outage lasts ``give_up_after``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sluice.errors import BrokerUnavailable, PublishTimeout, SluiceError, UnknownQueue
from sluice.handles import TrackingUnavailable
from sluice.protocol import TaskMessage
from sluice.publisher import Prepared, Publisher, PublishOutcome
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_producer.handled import HandledMessage, HandleOps
from sluice_producer.inputs import Bad, Item

__all__ = [
    "Failure",
    "NotAttempted",
    "Sink",
    "StreamReport",
    "count_published",
    "publish_all",
    "publish_claimed",
    "publish_stream",
]

KEEP_FAILURES = 1000  # failures kept (for --json) by publish_stream; the rest are counted
_KEEP_REFUSED = 1000  # unknown queues remembered, so their later lines are refused without a broker call


class NotAttempted(BrokerUnavailable):
    """Not published: the broker failed on an earlier task of the same run."""


async def publish_all(
    publisher: Publisher,
    messages: Sequence[TaskMessage],
    on_done: Callable[[PublishOutcome], None] | None = None,
) -> list[PublishOutcome]:
    """Publish ``messages`` in order; one outcome per message, by index. Never raises per task."""
    outcomes: list[PublishOutcome | None] = [None] * len(messages)

    def done(out: PublishOutcome) -> None:
        outcomes[out.index] = out
        if on_done is not None:
            on_done(out)

    # declare every queue first, under the publish deadline: a blocked broker must not hang here
    for queue in dict.fromkeys(m.queue for m in messages):
        try:
            async with asyncio.timeout(publisher.settings.publish_timeout):
                await publisher.ensure_queue(queue)
        except (TimeoutError, SluiceError) as e:
            return _all_failed(messages, _declare_error(publisher, queue, e), on_done)

    report = await publisher.publish_many(messages, done, give_up_after=0)
    first = next((o.error for o in outcomes if o is not None and o.error is not None), None)
    for i in range(report.total, len(messages)):
        done(
            PublishOutcome(
                i, messages[i].id, NotAttempted(f"not attempted after an earlier failure: {first}")
            )
        )
    return [o for o in outcomes if o is not None]


async def publish_claimed(
    publisher: Publisher, messages: Sequence[TaskMessage], ops: HandleOps
) -> tuple[list[PublishOutcome], dict[int, str]]:
    """:func:`publish_all` for tasks that may have handle options: unique keys claimed first, in order (a
    key given twice publishes the first), duplicates not published; a claim released when its task is
    not confirmed; confirmed tracked tasks marked queued. Returns the outcomes of the published tasks
    (indexes of ``messages``) and the duplicates (index -> the holder's id). Redis down while claiming:
    the claims made are released and :class:`TrackingUnavailable` is raised (nothing published)."""
    held: dict[int, str] = {}
    at: list[int] = []  # published index -> index in messages
    try:
        for i, msg in enumerate(messages):
            existing = await ops.claim(msg)
            if existing is None:
                at.append(i)
            else:
                held[i] = existing
    except BaseException:
        for i in at:
            await ops.release(messages[i])
        raise
    sending = [messages[i] for i in at]
    settled: set[int] = set()

    def done(out: PublishOutcome) -> None:
        settled.add(out.index)
        if out.error is None:
            ops.confirmed(sending[out.index])
        else:
            ops.failed(sending[out.index])

    try:
        outcomes = await publish_all(publisher, sending, done)
    except BaseException:  # cancelled: what was not settled may not hold its key
        for i, msg in enumerate(sending):
            if i not in settled:
                ops.failed(msg)
        raise
    finally:
        await asyncio.shield(ops.flush())
    return [PublishOutcome(at[o.index], o.task_id, o.error) for o in outcomes], held


def _declare_error(publisher: Publisher, queue: str, e: BaseException) -> SluiceError:
    if isinstance(e, SluiceError):
        return e
    return PublishTimeout(f"declaring queue {queue!r} took over {publisher.settings.publish_timeout:g}s")


def _all_failed(
    messages: Sequence[TaskMessage], err: SluiceError, on_done: Callable[[PublishOutcome], None] | None
) -> list[PublishOutcome]:
    outs = [PublishOutcome(i, m.id, err) for i, m in enumerate(messages)]
    if on_done is not None:
        for out in outs:
            on_done(out)
    return outs


def count_published(
    telemetry: Telemetry | NullTelemetry, messages: Sequence[TaskMessage], outcomes: Sequence[PublishOutcome]
) -> None:
    """Count the confirmed ones in ``telemetry``, per queue (one call per queue, not per task)."""
    per_queue: dict[str, int] = {}
    for out in outcomes:
        if out.error is None:
            queue = messages[out.index].queue
            per_queue[queue] = per_queue.get(queue, 0) + 1
    for queue, n in per_queue.items():
        telemetry.published(queue, n)


@dataclass(frozen=True, slots=True)
class Failure:
    """A task of a stream that was not published (``task_id`` None) or not confirmed."""

    index: int  # 0-based position among the input's tasks (a bad line counts as one)
    where: str
    task_id: str | None
    error: SluiceError

    @property
    def message(self) -> str:
        """The error on one line, naming where the task came from."""
        text = " ".join(str(self.error).split()) or type(self.error).__name__
        return text if text.startswith(self.where) else f"{self.where}: {text}"


class Sink(Protocol):
    """Where :func:`publish_stream` reports, as it goes."""

    def confirmed(self, task_id: str) -> None: ...
    def duplicate(self, where: str, existing: str) -> None: ...
    def failed(self, failure: Failure) -> None: ...
    def outage(self, error: BaseException | None) -> None: ...


@dataclass(slots=True)
class StreamReport:
    published: int = 0
    invalid: int = 0  # inputs refused by a check (not published)
    not_confirmed: int = 0  # published but not confirmed, or not attempted after giving up
    republished: int = 0
    duplicates: int = 0  # not published: their unique key is held by another task
    gave_up: bool = False
    failures: list[Failure] = field(default_factory=list)  # the first KEEP_FAILURES
    per_queue: dict[str, int] = field(default_factory=dict)  # confirmed tasks per queue

    @property
    def failed(self) -> int:
        return self.invalid + self.not_confirmed


async def publish_stream(
    publisher: Publisher,
    entries: AsyncIterable[Item | Bad],
    sink: Sink,
    *,
    give_up_after: float,
    ops: HandleOps | None = None,
) -> StreamReport:
    """Publish every :class:`Item` of ``entries``; report each outcome to ``sink`` in input order.

    Bad entries and tasks for a queue that is neither creatable nor on the broker are reported as
    failures and not published. State: the tasks in flight (``publish_window``) and the first
    :data:`KEEP_FAILURES` failures.

    ``ops``: tasks with handle options (:class:`HandledMessage`) have their unique key claimed before
    they are published (a duplicate is reported to ``sink.duplicate`` and not published, a claim that
    cannot be decided is a failure), released if not confirmed, and are marked queued once confirmed
    (batched; flushed before this returns).
    """
    report = StreamReport()
    source = aiter(entries)
    # publish index -> (position, where, queue, the message if it has handle options)
    flying: dict[int, tuple[int, str, str, HandledMessage | None]] = {}
    refused: dict[str, UnknownQueue] = {}
    position = 0

    def fail(where: str, task_id: str | None, error: SluiceError, at: int) -> None:
        failure = Failure(at, where, task_id, error)
        if len(report.failures) < KEEP_FAILURES:
            report.failures.append(failure)
        sink.failed(failure)

    async def queue_refused(queue: str) -> UnknownQueue | None:
        if queue in refused:
            return refused[queue]
        try:
            async with asyncio.timeout(publisher.settings.publish_timeout):
                await publisher.ensure_queue(queue)
        except UnknownQueue as e:
            if len(refused) < _KEEP_REFUSED:
                refused[queue] = e
            return e
        except (TimeoutError, BrokerUnavailable):
            pass  # the broker is away: publish() declares it, riding through the outage
        return None

    async def feed() -> AsyncGenerator[TaskMessage | Prepared, None]:
        nonlocal position
        i = 0
        async for entry in source:
            at, position = position, position + 1
            if isinstance(entry, Bad):
                report.invalid += 1
                fail(entry.where, None, entry.error, at)
                continue
            msg = entry.msg
            if not publisher.knows_queue(msg.queue) and (e := await queue_refused(msg.queue)) is not None:
                report.invalid += 1
                fail(entry.where, None, e, at)
                continue
            handled = msg if ops is not None and isinstance(msg, HandledMessage) else None
            if handled is not None and ops is not None:
                try:
                    existing = await ops.claim(handled)
                except TrackingUnavailable as e:
                    report.invalid += 1
                    fail(entry.where, None, e, at)
                    continue
                if existing is not None:
                    report.duplicates += 1
                    sink.duplicate(entry.where, existing)
                    continue
            flying[i] = (at, entry.where, msg.queue, handled)
            i += 1
            yield msg if entry.body is None else Prepared(msg, entry.body)

    def done(out: PublishOutcome) -> None:
        at, where, queue, handled = flying.pop(out.index)
        if handled is not None and ops is not None:
            if out.error is None:
                ops.confirmed(handled)
            else:
                ops.failed(handled)
        if out.error is None:
            report.published += 1
            report.per_queue[queue] = report.per_queue.get(queue, 0) + 1
            sink.confirmed(out.task_id)
        else:
            report.not_confirmed += 1
            fail(where, out.task_id, out.error, at)

    fed = feed()
    try:
        result = await publisher.publish_many(
            fed, done, ordered=True, give_up_after=give_up_after, keep_failed=0, on_outage=sink.outage
        )
    finally:
        await fed.aclose()
        if ops is not None:
            await ops.flush()
    report.republished = result.republished
    report.gave_up = result.gave_up
    if result.gave_up:  # the rest of the input is read, counted and reported, never sent
        why = NotAttempted(f"not attempted: gave up after the broker was unavailable for {give_up_after:g}s")
        async for entry in source:
            at, position = position, position + 1
            if isinstance(entry, Bad):
                report.invalid += 1
                fail(entry.where, None, entry.error, at)
            else:
                report.not_confirmed += 1
                fail(entry.where, entry.msg.id, why, at)
    return report
