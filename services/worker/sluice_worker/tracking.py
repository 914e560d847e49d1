"""The worker's part of the task handles: one :class:`~sluice.handles.Tracker` and one
:class:`~sluice.handles.CancelWatch` (with its :class:`~sluice_worker.policies.cancel.Canceller`) per
worker process, over the worker's Redis client.

:meth:`WorkerHandles.start` loads the live cancels and subscribes to the cancel channel before the
first delivery (bounded: with Redis down the worker starts all the same, the watch fills once Redis
answers); :meth:`WorkerHandles.aclose` closes them in order once consuming stopped: the tracker first
(it sends the writes still queued), then the watch. The Redis client is the caller's (closed after).
Tracking failures (Redis down) are counted in the worker's telemetry (``tracking_failures``) and
logged once per outage by the tracker; a task never fails for them.
"""

from __future__ import annotations

import logging
import os
import socket

from sluice.handles import CancelWatch, Tracker
from sluice.redis_client import AnyRedis
from sluice.resilience.clock import SYSTEM, Clock
from sluice.settings import Settings
from sluice.telemetry import TRACKING_FAILURES, NullTelemetry, Telemetry
from sluice_worker.policies.cancel import Canceller

__all__ = ["WorkerHandles", "worker_name"]

log = logging.getLogger("sluice.worker")


def worker_name() -> str:
    """``host:pid``, as a task's record names the worker that last wrote it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerHandles:
    """The tracker and the cancels of one worker process."""

    def __init__(
        self,
        redis: AnyRedis,
        settings: Settings,
        *,
        telemetry: Telemetry | NullTelemetry | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        t = telemetry or NullTelemetry()

        def count(what: str) -> None:  # the tracker's report of each write
            if what in ("failed", "dropped"):
                t.handle_event(TRACKING_FAILURES)

        self.tracker = Tracker(
            redis,
            settings.prefix,
            worker=worker_name(),
            clock=clock,
            ttl=settings.track_ttl,
            running_after=settings.track_running_after,
            telemetry=count,
            logger=log,
        )
        self.watch = CancelWatch(redis, settings.prefix, clock=clock, logger=log)
        self.canceller = Canceller(self.watch)
        self.watch.on_cancel(self.canceller.cancel)

    async def start(self) -> None:
        await self.watch.start()

    async def aclose(self) -> None:
        try:
            await self.tracker.aclose()
        finally:
            await self.watch.aclose()
