"""The engine of :meth:`sluice.publisher.Publisher.publish_many`: a window of confirms in flight.

* At most ``publish_window`` tasks are in flight. With ``ordered`` the window spans the oldest task not
  yet reported to the newest sent, and outcomes are reported in input order (a later confirm waits for
  the earlier ones; memory stays bounded by the window either way).
* ``give_up_after`` (seconds) rides through a broker outage: after a broker-level failure (connection
  lost, channel closed, no confirm within ``publish_timeout``) no new task is taken, each task not
  confirmed waits for the robust connection to come back and is published again, and the feed goes on.
  Only when the outage lasts ``give_up_after`` seconds do the tasks in flight fail (:class:`GaveUp`) and
  no further task is taken (``report.gave_up``). ``0`` gives up at the first broker-level failure;
  ``None`` never stops taking tasks (each fails or succeeds on its own).

* Each attempt's confirm is bounded by ``publish_timeout``, by one watchdog for the whole window rather
  than a timer per publish (a timer per publish was a few percent of the CPU of a bulk publish): every
  ``publish_timeout / 2`` seconds it fails, as a :class:`~sluice.errors.PublishTimeout`, the attempts in
  flight since two ticks ago, so an attempt fails between 1 and 1.5 ``publish_timeout`` after it began.
  In an outage each attempt has its own deadline (the outage's), and the watchdog stands aside.

A task is published again only after its previous attempt has finished (confirmed, failed or timed
out: its aiormq confirmation future is done), never while that attempt is still in flight: aiormq
tracks returns by ``message_id`` and two publishes of one id in flight at once can hang (aio-pika #689).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias, cast

from sluice.errors import BrokerError, BrokerUnavailable, PublishTimeout, SluiceError
from sluice.protocol import TaskMessage

if TYPE_CHECKING:
    from sluice.publisher import Publisher

__all__ = ["BROKER_LEVEL", "GaveUp", "Prepared", "PublishOutcome", "PublishReport", "PublishWindow"]

# failures that say the broker, not this one task, is the problem (the except clause below names them too)
BROKER_LEVEL: tuple[type[SluiceError], ...] = (BrokerUnavailable, PublishTimeout)
_BACKOFF_MAX = 1.0  # seconds between two attempts of one task in an outage (aio-pika reconnects every 1 s)


class GaveUp(BrokerUnavailable):
    """Not confirmed: the broker stayed unavailable for longer than ``give_up_after``."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A task whose body is already encoded and size-checked (by the caller's input check): published
    as is, not encoded a second time."""

    msg: TaskMessage
    body: bytes


@dataclass(slots=True)
class PublishOutcome:
    """One task of a bulk publish: its position, its id, and the error if it was not confirmed."""

    index: int
    task_id: str
    error: SluiceError | None = None


@dataclass(slots=True)
class PublishReport:
    """What :meth:`~sluice.publisher.Publisher.publish_many` did.

    ``failed`` holds the outcomes of failed tasks (at most ``keep_failed`` of them), ``failures``
    counts them all; ``republished`` counts the publishes sent again after a broker-level failure
    (each may have made a duplicate, if the broker had stored the earlier one); ``gave_up``: an outage
    outlasted ``give_up_after`` and the tasks not taken from the input were not attempted.
    """

    confirmed: int = 0
    failed: list[PublishOutcome] = field(default_factory=list)
    failures: int = 0
    republished: int = 0
    gave_up: bool = False

    @property
    def total(self) -> int:
        return self.confirmed + self.failures


Outgoing: TypeAlias = "TaskMessage | Prepared"  # what a bulk publish takes


class PublishWindow:
    """One run of :meth:`~sluice.publisher.Publisher.publish_many` (see the module's docstring)."""

    def __init__(
        self,
        publisher: Publisher,
        on_done: Callable[[PublishOutcome], None] | None,
        *,
        ordered: bool,
        give_up_after: float | None,
        keep_failed: int | None,
        on_outage: Callable[[BaseException | None], None] | None,
    ) -> None:
        self.report = PublishReport()
        self._pub = publisher
        self._on_done = on_done
        self._ordered = ordered
        self._give_up_after = give_up_after
        self._keep = keep_failed
        self._on_outage = on_outage
        self._slots = asyncio.Semaphore(publisher.settings.publish_window)
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._outage_since: float | None = None
        self._finished: dict[int, PublishOutcome] = {}  # ordered: done, waiting for an earlier task
        self._next = 0  # ordered: the index reported next
        self._timeout = publisher.settings.publish_timeout
        self._sending: dict[int, tuple[asyncio.Task[None], int]] = {}  # index -> (its task, attempt serial)
        self._serial = 0
        self._overdue: set[int] = set()  # attempt serials the watchdog cancelled

    async def run(self, messages: Iterable[Outgoing] | AsyncIterable[Outgoing]) -> PublishReport:
        errors: list[Exception] = []  # the input's own failure, raised once what is in flight is done
        watchdog = asyncio.create_task(self._watch())
        try:
            await self._feed(_taker(messages), errors)
        finally:
            watchdog.cancel()
        failed = errors[0] if errors else None
        if failed is not None:
            raise failed
        return self.report

    async def _feed(self, take: Callable[[], Awaitable[Outgoing]], failed: list[Exception]) -> None:
        async with asyncio.TaskGroup() as tg:
            i = 0
            while True:
                await self._slots.acquire()
                await self._healthy.wait()  # paused while the broker is away
                if self.report.gave_up:
                    break
                try:
                    msg = await take()
                except StopAsyncIteration:
                    break
                except Exception as e:  # the input failed: what is in flight still finishes and is reported
                    failed.append(e)
                    break
                tg.create_task(self._one(i, msg))
                i += 1

    async def _one(self, i: int, item: Outgoing) -> None:
        if type(item) is Prepared:
            msg, body = item.msg, item.body
        else:
            msg, body = cast(TaskMessage, item), None
        out = PublishOutcome(i, msg.id)
        try:
            await self._publish(i, msg, body)
            self.report.confirmed += 1
        except Exception as e:  # never raises per task: one task's surprise must not cancel the others
            out.error = (
                e if isinstance(e, SluiceError) else BrokerError(f"unexpected {type(e).__name__}: {e}")
            )
            self.report.failures += 1
            if self._keep is None or len(self.report.failed) < self._keep:
                self.report.failed.append(out)
        if not self._ordered:
            self._slots.release()
            if self._on_done is not None:
                self._on_done(out)
            return
        self._finished[i] = out
        while self._next in self._finished:
            done = self._finished.pop(self._next)
            self._next += 1
            self._slots.release()
            if self._on_done is not None:
                self._on_done(done)

    async def _publish(self, i: int, msg: TaskMessage, body: bytes | None) -> None:
        limit = self._give_up_after
        if limit is None:
            await self._send(i, msg, body)
            return
        attempt = 0
        while True:
            try:
                if self._outage_since is None:
                    await self._send(i, msg, body)
                else:  # in an outage no attempt may outlast its deadline
                    async with asyncio.timeout(max(self._deadline() - time.monotonic(), 0.0)):
                        await self._send(i, msg, body)
            except (BrokerUnavailable, PublishTimeout, TimeoutError) as e:
                err = e if isinstance(e, SluiceError) else PublishTimeout("no confirm before the deadline")
                self._outage_begins(err)
                if limit == 0:
                    self._give_up()
                    raise err from None
                attempt += 1
                if not await self._recovered(attempt):
                    self._give_up()
                    raise GaveUp(
                        f"gave up after the broker was unavailable for {limit:g}s (last: {_one_line(err)})"
                    ) from None
                self.report.republished += 1
                continue
            if attempt and self._outage_since is not None:  # a re-publish confirmed: the broker is back
                self._outage_since = None
                self._healthy.set()
                if self._on_outage is not None:
                    self._on_outage(None)
            return

    async def _send(self, i: int, msg: TaskMessage, body: bytes | None) -> None:
        """One attempt, watched by :meth:`_watch`: its cancellation by the watchdog is a PublishTimeout."""
        me = asyncio.current_task()
        assert me is not None
        serial = self._serial = self._serial + 1
        self._sending[i] = (me, serial)
        try:
            await self._pub.publish(msg, body, bounded=False)
        except asyncio.CancelledError:
            if serial not in self._overdue:
                raise
            self._overdue.discard(serial)
            if me.uncancel() > 0:
                raise  # cancelled from outside too
            raise PublishTimeout(
                f"no confirm within {self._timeout:g}s (broker down or blocked by an alarm?)"
            ) from None
        finally:
            del self._sending[i]

    async def _watch(self) -> None:
        """Fail the attempts in flight for ``publish_timeout`` (see the module's docstring)."""
        ages: dict[int, int] = {}  # attempt serial -> watchdog ticks it was seen in flight
        while True:
            await asyncio.sleep(self._timeout / 2)
            if self._outage_since is not None:  # attempts in an outage carry their own deadline
                ages.clear()
                continue
            seen: dict[int, int] = {}
            for task, serial in list(self._sending.values()):
                n = ages.get(serial, 0) + 1
                if n < 3:  # seen at this tick and the two before it: in flight for publish_timeout
                    seen[serial] = n
                elif serial not in self._overdue:
                    self._overdue.add(serial)
                    task.cancel()
            ages = seen

    def _deadline(self) -> float:
        assert self._outage_since is not None and self._give_up_after is not None
        return self._outage_since + self._give_up_after

    def _outage_begins(self, err: SluiceError) -> None:
        if self._outage_since is None and not self.report.gave_up:
            self._outage_since = time.monotonic()
            self._healthy.clear()
            if self._on_outage is not None:
                self._on_outage(err)

    async def _recovered(self, attempt: int) -> bool:
        """Wait (a short backoff, then until the channel is open again) within the outage's deadline."""
        if self.report.gave_up:
            return False
        try:
            async with asyncio.timeout(max(self._deadline() - time.monotonic(), 0.0)):
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), _BACKOFF_MAX))
                await self._pub.wait_ready()
        except TimeoutError:
            return False
        return not self.report.gave_up

    def _give_up(self) -> None:
        if not self.report.gave_up:
            self.report.gave_up = True
            self._healthy.set()  # wake the feed: it stops


def _taker(
    messages: Iterable[Outgoing] | AsyncIterable[Outgoing],
) -> Callable[[], Awaitable[Outgoing]]:
    """``await take()``: the next message, or StopAsyncIteration. No generator in between, so a caller
    that stops early can go on with its own iterator exactly where this one stopped."""
    if isinstance(messages, AsyncIterable):
        ait = aiter(messages)

        async def take_async() -> Outgoing:
            return await anext(ait)

        return take_async
    it = iter(messages)

    async def take() -> Outgoing:
        try:
            return next(it)
        except StopIteration:
            raise StopAsyncIteration from None

    return take


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
