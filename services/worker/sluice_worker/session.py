"""One broker connection's consuming: a :class:`Session` (supervised by :class:`~sluice_worker.consumer.Consumer`).

A session owns a plain (non-robust) connection with two channels: one consuming every queue (per-consumer
QoS = ``prefetch``; quorum queues reject global QoS) and one in confirm mode for dead-letter copies. The
broker's delivery tasks run the :class:`~sluice_worker.runner.Runner` under a semaphore of ``concurrency``
slots; finished deliveries are acked in batches (``multiple=True`` over the contiguous finished prefix, see
:mod:`sluice_worker._acks`) by one flusher task.

When the connection or a channel closes, or the broker cancels a consumer, :meth:`Session.wait_lost`
answers and the consumer drops the session whole (its unacked deliveries will be redelivered, its running
handlers are cancelled with the channel) and opens a new one.

With :class:`~sluice_worker.pauses.Pauses` (``SLUICE_PAUSE_BLOCKED``, the default), each outcome tells it
what blocks its task, and one task (:class:`~sluice_worker._pause_loop.PauseLoop`) cancels the consumer of
a queue whose tasks are all blocked and consumes it again when the block ends (the module says when); a
queue still blocked when a session opens is not consumed until then. Draining stops that task first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from sluice.connection import BROKER_ERRORS
from sluice.errors import SluiceError
from sluice.settings import Settings
from sluice.topology import Topology
from sluice_worker._acks import AckTracker
from sluice_worker._pause_loop import PauseLoop
from sluice_worker.dead_publish import DeadLetterPublisher
from sluice_worker.delays import DelayPublisher
from sluice_worker.failures import settled
from sluice_worker.invoke import cancelled_from_outside
from sluice_worker.log_throttle import LogThrottle
from sluice_worker.outcome import (
    ACK,
    Cancelled,
    DeadLettered,
    Deferred,
    Outcome,
    Retry,
    Skipped,
)
from sluice_worker.pauses import Pauses
from sluice_worker.recording import DeliveryRecorder
from sluice_worker.runner import Runner

__all__ = ["Session"]

log = logging.getLogger("sluice.worker")

_CANCEL_TIMEOUT = 5.0
# batched acks: one ack frame once this many deliveries finished (a quarter of the prefetch window), or
# this many seconds after the first one finished, whichever is sooner
_ACK_INTERVAL = 0.005
# finished deliveries held behind a running one (no multiple-ack can cover them) are acked on their own
# once this many seconds passed without another delivery finishing (or once a batch of them waits)
_HELD_FOR = 2.0
_ACK_ONLY = (Skipped, Cancelled)  # outcomes carried out by the ack alone (besides ACK)
_CANCEL_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *BROKER_ERRORS)


class Session:
    """Consuming over one connection. Not reusable: after a loss the :class:`Consumer` opens a new one."""

    def __init__(
        self,
        connection: AbstractConnection,
        settings: Settings,
        runner: Runner,
        slots: asyncio.Semaphore,
        throttle: LogThrottle,
        recorder: DeliveryRecorder | None = None,
        pauses: Pauses | None = None,
    ) -> None:
        self.connection = connection
        self._pauses = pauses
        self._recorder = recorder or DeliveryRecorder.off()
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._runner = runner
        self._slots = slots
        self._throttle = throttle
        self._acks = AckTracker()
        self._wake = asyncio.Event()  # a delivery finished since the last ack
        self._full = asyncio.Event()  # a batch of them did
        self._unflushed = 0
        self._batch = max(1, settings.prefetch // 4)
        self._closing = False
        self._inflight: set[asyncio.Task[Any]] = set()
        self._consumer_tags: dict[str, str] = {}  # queue -> its consumer's tag (none while paused)
        self._queues: list[str] = []
        self._pauser: asyncio.Task[None] | None = None
        self._cancelled: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._lost_acks_logged = False
        # strong references to everything the broker objects hang on
        self._channel: AbstractChannel | None = None
        self._raw: RawChannel | None = None
        self._dead: DeadLetterPublisher | None = None
        self._later: DelayPublisher | None = None
        self._flusher: asyncio.Task[None] | None = None

    # ---- opening
    async def open(self, queues: Sequence[str]) -> None:
        """Declare the topology, set QoS and start one consumer per queue."""
        s, topo = self._settings, self._topology
        channel = self._channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=s.prefetch)
        await topo.declare_base(channel)
        for q in queues:
            await topo.declare_queue(channel, q)
        dead_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        _, dead_exchange = await topo.declare_base(dead_channel)
        clock = self._runner.clock
        self._dead = DeadLetterPublisher(dead_channel, dead_exchange, s.publish_timeout, clock=clock)
        tasks_exchange = await dead_channel.get_exchange(topo.tasks_exchange, ensure=False)
        self._later = DelayPublisher(dead_channel, tasks_exchange, topo, s.publish_timeout, clock=clock)
        raw = self._raw = await channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        self._flusher = asyncio.create_task(self._flush_loop(raw), name="sluice-acks")
        self._queues = list(queues)
        pauses = self._pauses
        for q in queues:
            still = pauses.blocked(q) if pauses is not None and q in pauses.paused else None
            if still is not None and pauses is not None:  # a reconnect while it was paused: stays so
                log.info("queue %s stays paused (%s) in the new session", q, still.reason)
                pauses.hold(q, still)
                continue
            if pauses is not None:
                pauses.release(q)
            await self._consume(raw, q)
        if pauses is not None:
            loop = PauseLoop(
                raw,
                pauses,
                self._queues,
                self._consumer_tags,
                lambda q: self._consume(raw, q),
                lambda: self._closing,
            )
            self._pauser = asyncio.create_task(loop.run(), name="sluice-pauses")

    async def _consume(self, raw: RawChannel, queue: str) -> None:
        ok = await raw.basic_consume(self._topology.queue(queue), self._consumer_for(queue))
        if ok.consumer_tag is not None:
            self._consumer_tags[queue] = ok.consumer_tag

    def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        if not self._cancelled.done():
            self._cancelled.set_result(f"the broker cancelled consumer {frame.consumer_tag}")

    # ---- the hot path
    def _consumer_for(self, queue: str) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        acks, slots, inflight, run = self._acks, self._slots, self._inflight, self._runner.run
        begin, end = self._recorder.begin, self._recorder.end
        observe = self._pauses.observe if self._pauses is not None else None

        async def on_delivery(dm: DeliveredMessage) -> None:
            tag = dm.delivery_tag
            if tag is None:  # not a basic.deliver: cannot happen on a consumer
                return
            acks.received(tag)
            if self._closing:
                return  # draining: left unacked, the broker redelivers it
            async with slots:
                if self._closing:
                    return
                me = asyncio.current_task()
                if me is not None:
                    inflight.add(me)
                started = begin()
                outcome: Outcome | None = None
                try:
                    p = dm.header.properties
                    try:
                        outcome = settled(await run(dm.body, p.headers, p.message_id, bool(dm.redelivered)))
                    except GeneratorExit as e:  # see settled()
                        outcome = settled(e)
                    if observe is not None:
                        observe(queue, p.headers, outcome)  # what blocks its task, if anything
                    if outcome is ACK or type(outcome) in _ACK_ONLY:
                        acks.finish(tag)
                        self._finished()
                    elif isinstance(outcome, (Deferred, Retry)):
                        await self._republish(queue, dm, tag, outcome)
                    elif isinstance(outcome, DeadLettered):
                        await self._dead_letter(queue, dm, tag, outcome)
                except asyncio.CancelledError:
                    if cancelled_from_outside():
                        raise  # the session is dropped or drained: the broker redelivers the message
                    await self._internal_error(queue, tag)
                except (
                    BaseException
                ):  # a bug of ours (the runner answers every handler failure): settle, go on
                    await self._internal_error(queue, tag)
                finally:
                    end(queue, dm.header.properties.headers, outcome, started)  # telemetry
                    if me is not None:
                        inflight.discard(me)

        return on_delivery

    async def _internal_error(self, queue: str, tag: int) -> None:
        """Our own bookkeeping failed on a delivery (the runner answers every handler failure): requeue
        it, so it is never left pending in the ack tracker, where it would hold back every later ack."""
        log.exception("internal error on a delivery from %s; requeueing it", queue)
        if self._acks.is_pending(tag):
            await self._answer_alone(tag, requeue=True)

    async def _dead_letter(self, queue: str, dm: DeliveredMessage, tag: int, dead: DeadLettered) -> None:
        if self._throttle.allow():
            log.warning(
                "dead-lettered task %s from queue %s: %s: %.300s",
                dm.header.properties.message_id,
                queue,
                dead.reason,
                dead.detail,
            )
        assert self._dead is not None
        try:
            await self._dead.publish(dm, queue, dead)
        except SluiceError as e:
            log.error("dead-letter copy not confirmed (%s); rejecting the delivery so the broker moves it", e)
            await self._answer_alone(tag, requeue=False)
            return
        self._acks.finish(tag)
        self._finished()

    def _finished(self) -> None:
        n = self._unflushed = self._unflushed + 1
        if n == 1:
            self._wake.set()
        elif n >= self._batch:
            self._full.set()

    async def _republish(self, queue: str, dm: DeliveredMessage, tag: int, out: Deferred | Retry) -> None:
        """Send the task back for later (confirmed), then ack it; unconfirmed: requeue the delivery."""
        assert self._later is not None
        try:
            await self._later.publish(dm, queue, out)
        except SluiceError as e:
            log.error("delayed copy (%s) not confirmed (%s); requeueing the delivery", out.reason, e)
            await self._answer_alone(tag, requeue=True)
            return
        self._acks.finish(tag)
        self._finished()

    async def _answer_alone(self, tag: int, *, requeue: bool) -> None:
        """``nack`` one delivery on its own frame and keep it out of the batched acks."""
        assert self._raw is not None
        try:
            await self._raw.basic_nack(tag, multiple=False, requeue=requeue)
        except BROKER_ERRORS as e:
            self._log_lost_acks(e)
            return
        self._acks.settle(tag)
        self._finished()

    async def _flush_loop(self, raw: RawChannel) -> None:
        acks, wake, full = self._acks, self._wake, self._full
        while True:
            held = False  # finished deliveries wait behind one still running, and nothing else finished
            if acks.finished:
                try:
                    async with asyncio.timeout(_HELD_FOR):
                        await wake.wait()
                except TimeoutError:
                    held = True
            else:
                await wake.wait()
            if not held and self._unflushed < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ACK_INTERVAL):
                        await full.wait()
            wake.clear()
            full.clear()
            self._unflushed = 0
            tag = acks.take()
            # finished deliveries behind one still running (a slow or hung handler) that a multiple-ack
            # cannot cover: once a batch of them wait, or they waited _HELD_FOR, each is acked on its own
            # frame, so a handler that never returns holds its own delivery, never the others' acks
            alone = acks.finished_out_of_order() if held or acks.finished >= self._batch else []
            try:
                if tag is not None:
                    await raw.basic_ack(tag, multiple=True, wait=False)
                for t in alone:
                    await raw.basic_ack(t, wait=False)
            except BROKER_ERRORS as e:
                self._log_lost_acks(e)
                return

    def _log_lost_acks(self, e: BaseException) -> None:
        if not self._lost_acks_logged:
            self._lost_acks_logged = True
            log.warning(
                "cannot ack on the lost channel (%s): its %d unacked deliveries will be redelivered",
                type(e).__name__,
                self._acks.outstanding,
            )

    # ---- watching, draining, dropping
    async def wait_lost(self) -> str:
        """Wait until this session cannot consume any more; says why."""
        assert self._raw is not None and self._dead is not None
        dead_raw = await self._dead.channel.get_underlay_channel()
        watched: dict[asyncio.Future[Any], str] = {
            self._raw.closing: "the consuming channel closed",
            dead_raw.closing: "the dead-letter channel closed",
            self._cancelled: "",
        }
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in watched:
                if f is not self._cancelled and not f.done():
                    f.cancel()
        f = done.pop()
        if f is self._cancelled:
            return f.result()  # type: ignore[no-any-return]
        if f.cancelled():
            return watched[f]
        exc = f.exception()
        return f"{watched[f]}: {exc!r}" if exc is not None else watched[f]

    async def drain(self, grace: float, force: asyncio.Event) -> None:
        """Stop consuming, give running tasks ``grace`` seconds (or until ``force``), ack them, close."""
        self._closing = True
        await self._stop_pauses()
        raw = self._raw
        if raw is not None:
            for ctag in list(self._consumer_tags.values()):
                try:
                    async with asyncio.timeout(_CANCEL_TIMEOUT):
                        await raw.basic_cancel(ctag)
                except _CANCEL_ERRORS:
                    break
        running = set(self._inflight)
        log.info(
            "draining: %d tasks running (grace %gs), %d prefetched deliveries go back to the broker",
            len(running),
            grace,
            self._acks.pending - len(running),
        )
        if running:
            all_done = asyncio.ensure_future(asyncio.wait(running))
            forced = asyncio.ensure_future(force.wait())
            await asyncio.wait({all_done, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            for f in (all_done, forced):
                f.cancel()
            late = [t for t in running if not t.done()]
            if late:
                log.warning(
                    "%d tasks still running after the grace period: cancelled, to be redelivered", len(late)
                )
                for t in late:
                    t.cancel()
                await asyncio.wait(late, timeout=_CANCEL_TIMEOUT)
        await self._final_acks()
        await self.close()

    async def _final_acks(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        raw = self._raw
        if raw is None:
            return
        try:
            tag = self._acks.take()
            if tag is not None:
                await raw.basic_ack(tag, multiple=True)
            for t in self._acks.finished_out_of_order():
                await raw.basic_ack(t)
        except BROKER_ERRORS as e:
            self._log_lost_acks(e)

    async def _stop_pauses(self) -> None:
        pauser, self._pauser = self._pauser, None
        if pauser is not None:
            pauser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pauser

    async def close(self) -> None:
        """Close channels and connection; unacked deliveries go back to their queues."""
        self._closing = True
        await self._stop_pauses()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for ch in (self._channel, self._dead.channel if self._dead else None):
            if ch is not None and not ch.is_closed:
                with contextlib.suppress(*BROKER_ERRORS, TimeoutError):
                    async with asyncio.timeout(_CANCEL_TIMEOUT):
                        await ch.close()
        with contextlib.suppress(*BROKER_ERRORS, TimeoutError):
            async with asyncio.timeout(_CANCEL_TIMEOUT):
                await self.connection.close()
