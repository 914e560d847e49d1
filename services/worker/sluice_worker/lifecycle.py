"""The worker's life: the thread pool, the consumer, telemetry, and how it ends: a drain.

The process itself is the one service runtime (:mod:`sluice.runtime`: uvloop, logging, signals).
SIGTERM or SIGINT asks for a drain: consumers are cancelled, running tasks get ``grace_period`` seconds to
finish and are acked, then the connection closes and the broker redelivers whatever is left (prefetched
deliveries never started, tasks cancelled after the grace period). A second signal cuts the grace short.

Burst mode (``sluice worker --burst``, arq's ``burst``) drains by itself once there is nothing left to
do, and the process exits 0. Nothing left to do means, for :attr:`Burst.quiet` seconds in a row, read
every :attr:`Burst.poll` seconds on a connection of its own:

- every queue the worker consumes has no ready message (a passive ``queue.declare``);
- no task runs in this worker (the delivery recorder's ``running``: a delivery counts from the moment
  it has a slot until its outcome is settled, a delayed copy confirmed or a dead letter published);
- every delay tier queue of the prefix is empty (``{prefix}.delay.{ms}``). The tiers are shared by all
  queues of a prefix, so a copy waiting for *another* queue keeps a burst worker running as well, and a
  task published with ``--delay 1h`` keeps it for that hour. Tiers never declared count as empty.

Messages other workers hold unacked are not waited for (they are theirs to settle or to give back).
The quiet period covers a message in transit: from a tier to its queue, or delivered to this worker
but not yet started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection

from sluice import _gc
from sluice.connection import BROKER_ERRORS, connect_plain
from sluice.errors import BrokerUnavailable, ConfigError
from sluice.resilience.clock import SYSTEM, Clock
from sluice.runtime import Shutdown
from sluice.runtime import run as run_service
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice.topology import DELAY_TIERS_MS, Topology
from sluice_worker.consumer import Consumer
from sluice_worker.outcome import FailurePolicy
from sluice_worker.policies import Policies, redis_for
from sluice_worker.recording import DeliveryRecorder
from sluice_worker.runner import Runner
from sluice_worker.tracking import WorkerHandles

__all__ = ["Burst", "Shutdown", "run", "serve"]

log = logging.getLogger("sluice.worker")

_READ_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, TimeoutError, *BROKER_ERRORS)


@dataclass(frozen=True, slots=True)
class Burst:
    """Burst mode: drain once nothing is left to do for ``quiet`` seconds, read every ``poll`` seconds
    (see the module doc for what "nothing" means)."""

    poll: float = 0.2
    quiet: float = 1.0
    delay_tiers: bool = True  # wait for the prefix's delay tiers to be empty too

    def __post_init__(self) -> None:
        if not self.poll > 0 or not self.quiet >= 0:
            raise ConfigError(f"burst: poll must be > 0 and quiet >= 0 (got {self.poll}, {self.quiet})")


async def serve(
    settings: Settings,
    registry: Registry,
    queues: Sequence[str],
    *,
    shutdown: Shutdown | None = None,
    policy: FailurePolicy | None = None,
    burst: Burst | None = None,
    clock: Clock = SYSTEM,
) -> None:
    """Consume ``queues`` (each fair queue with its sub-queues) until ``shutdown.stop`` (or SIGTERM/SIGINT
    when no ``shutdown`` is given), or, with ``burst``, until nothing is left to do. ``clock``: the one
    clock of the worker (its policies, runner, delivery recorder and burst watch)."""
    own = shutdown is None
    sd = shutdown or Shutdown(log)
    # a fair queue is consumed with its sub-queues, one consumer each (sluice.fair, docs/policies.md)
    queues = registry.fair_routes().expand(queues)
    names = sorted(registry)
    log.info("%d tasks: %s%s", len(names), ", ".join(names[:20]), ", ..." if len(names) > 20 else "")
    pool = ThreadPoolExecutor(settings.sync_threads, thread_name_prefix="sluice-sync")
    telemetry = telemetry_for(settings, "worker")  # one snapshot a second to the metrics service
    redis = redis_for(settings)  # task policies (docs/policies.md); not used by tasks that declare none
    # task handles (docs/tasks.md): the state writes of tracked tasks, the live cancels of every task
    handles = WorkerHandles(redis, settings, telemetry=telemetry, clock=clock)
    policies = Policies(
        redis,
        settings.prefix,
        telemetry=telemetry,
        clock=clock,
        tracker=handles.tracker,
        canceller=handles.canceller,
        track_all=settings.track_all,
    )
    try:
        await handles.start()  # the live cancels, before the first delivery (bounded: Redis may be down)
        recorder = DeliveryRecorder(telemetry, names, clock=clock)
        runner = Runner(registry, settings, pool, policy or policies.failures, policies, clock=clock)
        consumer = Consumer(settings, runner, queues, recorder=recorder, telemetry=telemetry)
        async with SnapshotPublisher(settings, telemetry):
            with sd.signals() if own else contextlib.nullcontext():
                if burst is None:
                    await consumer.run(sd.stop, sd.force)
                else:
                    idle = IdleWatch(settings, queues, burst, consumer, recorder, clock=clock)
                    await _with_watch(consumer.run(sd.stop, sd.force), idle.until_idle(sd), sd)
    finally:
        # a sync handler still running after the grace period cannot be interrupted; do not wait for it
        pool.shutdown(wait=False, cancel_futures=True)
        await policies.aclose()
        await handles.aclose()  # the tracker's last writes, then the cancel watch
        await redis.aclose()
    log.info("stopped")


async def _with_watch(
    consuming: Coroutine[Any, Any, None], watching: Coroutine[Any, Any, None], sd: Shutdown
) -> None:
    """Run the consumer with the idle watch beside it; the watch ends with the consumer. A watch that
    fails drains the worker (a burst run must never outlive its watch) and its error is raised."""

    def failed(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the burst watch failed: %r", task.exception())
            sd.request("burst watch failed")

    watch = asyncio.ensure_future(watching)
    watch.add_done_callback(failed)
    try:
        await consuming
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch  # a failure of the watch itself is raised here


def run(settings: Settings, registry: Registry, queues: Sequence[str], *, burst: Burst | None = None) -> None:
    """Run a worker in this process until a signal drains it (or, with ``burst``, until it is idle)."""
    _gc.tune(settings.gc_threshold)  # its tasks are loaded: the startup heap is what it will be
    run_service(serve(settings, registry, queues, burst=burst))


class IdleWatch:
    """Reads whether a worker has anything left to do (the module doc says what that is)."""

    def __init__(
        self,
        settings: Settings,
        queues: Sequence[str],
        burst: Burst,
        consumer: Consumer,
        recorder: DeliveryRecorder,
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        topo = Topology.from_settings(settings)
        self._settings = settings
        self._burst = burst
        self._consumer = consumer
        self._recorder = recorder
        self._clock = clock
        self._work = [topo.queue(q) for q in queues]
        self._tiers = [topo.delay_queue(ms) for ms in DELAY_TIERS_MS] if burst.delay_tiers else []
        self._conn: AbstractConnection | None = None

    async def until_idle(self, sd: Shutdown) -> None:
        """Ask ``sd`` for a drain once the worker stayed idle for the quiet period."""
        b = self._burst
        try:
            while self._consumer.sessions == 0:  # not consuming yet: its queues may not exist yet
                if await _wait(sd.stop, b.poll):
                    return
            idle_since: float | None = None
            while not sd.stop.is_set():
                busy = await self.busy()
                now = self._clock.monotonic()
                if busy is not None:
                    log.debug("burst: still to do: %s", busy)
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= b.quiet:
                    sd.request("burst: the queues are empty and no task runs")
                    return
                if await _wait(sd.stop, b.poll):
                    return
        finally:
            await self.aclose()

    async def busy(self) -> str | None:
        """What is still to do (a short description), or None when there is nothing."""
        if self._recorder.running:
            return f"{self._recorder.running} tasks running"
        try:
            async with asyncio.timeout(self._settings.connect_timeout):  # a silent broker: busy, not hung
                return await self._waiting()
        except _READ_ERRORS as e:
            await self.aclose()  # read again on a new connection next time
            return f"cannot read the queues: {e!r}"

    async def _waiting(self) -> str | None:
        if self._conn is None or self._conn.is_closed:
            self._conn = await connect_plain(self._settings, "sluice-worker burst")
        channel = await self._conn.channel(publisher_confirms=False)
        try:
            for name in self._work:
                ready, channel = await _ready(self._conn, channel, name)
                if ready:
                    return f"{ready} ready in {name}"
            for i, name in enumerate(self._tiers):
                ready, channel = await _ready(self._conn, channel, name)
                if ready is None and i == 0:
                    break  # the tiers are declared together, on the first delayed copy: none yet
                if ready:
                    return f"{ready} waiting in {name}"
            return None
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*BROKER_ERRORS):
                    await channel.close()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(TimeoutError, *BROKER_ERRORS):
                async with asyncio.timeout(2.0):
                    await conn.close()


async def _ready(
    conn: AbstractConnection, channel: AbstractChannel, name: str
) -> tuple[int | None, AbstractChannel]:
    """(ready messages of queue ``name``, or None when it does not exist; a channel to go on with)."""
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None, await conn.channel(publisher_confirms=False)  # the 404 closed the old one
    return int(queue.declaration_result.message_count or 0), channel


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """True once ``event`` is set, False after ``seconds`` without it."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
