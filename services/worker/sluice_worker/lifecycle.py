"""The worker's life: logging, signals, the thread pool, the event loop, and a graceful drain.

SIGTERM or SIGINT asks for a drain: consumers are cancelled, running tasks get ``grace_period`` seconds to
finish and are acked, then the connection closes and the broker redelivers whatever is left (prefetched
deliveries never started, tasks cancelled after the grace period). A second signal cuts the grace short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice_worker.consumer import Consumer
from sluice_worker.gate import PolicyGate, redis_for
from sluice_worker.outcome import FailurePolicy
from sluice_worker.runner import Runner
from sluice_worker.telemetry_hook import DeliveryRecorder

__all__ = ["Shutdown", "configure_logging", "run", "serve"]

log = logging.getLogger("sluice.worker")

T = TypeVar("T")


class Shutdown:
    """Two events: ``stop`` (drain) on the first signal, ``force`` (stop now) on the second."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()

    def request(self, why: str = "asked to stop") -> None:
        if not self.stop.is_set():
            log.info("%s: draining (send it again to stop at once)", why)
            self.stop.set()
        elif not self.force.is_set():
            log.warning("%s again: stopping at once", why)
            self.force.set()

    @contextmanager
    def signals(self, sigs: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
        """Route ``sigs`` to :meth:`request` while inside the block."""
        loop = asyncio.get_running_loop()
        for sig in sigs:
            loop.add_signal_handler(sig, self.request, f"received {sig.name}")
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


async def serve(
    settings: Settings,
    registry: Registry,
    queues: Sequence[str],
    *,
    shutdown: Shutdown | None = None,
    policy: FailurePolicy | None = None,
) -> None:
    """Consume ``queues`` until ``shutdown.stop`` (or SIGTERM/SIGINT when no ``shutdown`` is given)."""
    own = shutdown is None
    sd = shutdown or Shutdown()
    names = sorted(registry)
    log.info("%d tasks: %s%s", len(names), ", ".join(names[:20]), ", ..." if len(names) > 20 else "")
    pool = ThreadPoolExecutor(settings.sync_threads, thread_name_prefix="sluice-sync")
    telemetry = telemetry_for(settings, "worker")  # one snapshot a second to the metrics service
    redis = redis_for(settings)  # task policies (docs/policies.md); not used by tasks that declare none
    gate = PolicyGate(redis, settings.prefix, telemetry=telemetry)
    try:
        recorder = DeliveryRecorder(telemetry, names)
        runner = Runner(registry, settings, pool, policy or gate.failures, gate)
        consumer = Consumer(settings, runner, queues, recorder=recorder)
        async with SnapshotPublisher(settings, telemetry):
            if own:
                with sd.signals():
                    await consumer.run(sd.stop, sd.force)
            else:
                await consumer.run(sd.stop, sd.force)
    finally:
        # a sync handler still running after the grace period cannot be interrupted; do not wait for it
        pool.shutdown(wait=False, cancel_futures=True)
        await gate.aclose()
        await redis.aclose()
    log.info("stopped")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run(settings: Settings, registry: Registry, queues: Sequence[str]) -> None:
    """Run a worker in this process until a signal drains it."""
    run_loop(serve(settings, registry, queues))


def configure_logging(level: str) -> None:
    """One line per event on stderr; the AMQP libraries only above INFO."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if level != "DEBUG":
        logging.getLogger("aiormq.connection").addFilter(_reconnect_chatter)


# what aiormq logs (with tracebacks) when the broker goes away or refuses a reconnection attempt; the
# worker says the same in one line ("lost the broker ...", "cannot reconnect ...")
_CHATTER = ("error when creating transport", "Unexpected connection close", "Cancelling cause reader")


def _reconnect_chatter(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_CHATTER))
