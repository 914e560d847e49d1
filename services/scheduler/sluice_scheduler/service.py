"""Running the scheduler: sync the code-declared schedules, keep the lease, fire while leading, and serve
``/healthz`` and ``/metrics``; drain on SIGTERM/SIGINT (the lease is given up, so another replica takes
over at once instead of after the lease).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Collection, Mapping, Sequence

from prometheus_client.exposition import choose_encoder

from sluice.connection import BROKER_ERRORS
from sluice.errors import BrokerUnavailable
from sluice.fair import FairRoutes
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher, creatable_queues
from sluice.redis_client import redis_client
from sluice.resilience.clock import SYSTEM, Clock
from sluice.runtime import listen, serve_http
from sluice.schedules import Schedule, ScheduleStore, StoreUnavailable
from sluice.settings import Settings

from .firing_loop import FireLoop
from .leadership import Leadership, sleep_or_stop
from .metrics import SchedulerMetrics

__all__ = ["LazyPublisher", "Scheduler", "instance_id", "serve"]

log = logging.getLogger("sluice.scheduler")


def instance_id() -> str:
    """``<host>-<pid>-<random>``: unique per process (a restarted scheduler is a new holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LazyPublisher:
    """A :class:`~sluice.publisher.Publisher` opened on first use, and again after a failed open (the broker
    may be down when the scheduler starts); once open, its robust connection reconnects by itself.
    ``creatable``: the queues it may create (others must exist: a schedule added at run time cannot make the
    broker create queues); ``None``: any. ``fair``: the fair tasks of the loaded modules, each published to
    its tenant's sub-queue (:mod:`sluice.fair`)."""

    def __init__(
        self, settings: Settings, creatable: Collection[str] | None = None, *, fair: FairRoutes | None = None
    ) -> None:
        self.settings = settings
        self.creatable = creatable
        self.fair = fair
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()

    async def publish(self, msg: TaskMessage) -> str:
        publisher = self._publisher
        if publisher is None:
            async with self._lock:
                if self._publisher is None:
                    p = Publisher(
                        self.settings, name="sluice-scheduler", creatable=self.creatable, fair=self.fair
                    )
                    try:
                        await p.__aenter__()
                    except BROKER_ERRORS as e:
                        raise BrokerUnavailable(f"cannot reach the broker: {e}") from None
                    self._publisher = p
                publisher = self._publisher
        return await publisher.publish(msg)

    async def aclose(self) -> None:
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None


class Scheduler:
    """The lease keeper and the fire loop of one process, on an injected clock."""

    def __init__(
        self,
        store: ScheduleStore,
        publish: LazyPublisher,
        *,
        instance: str | None = None,
        lease: float = 10.0,
        tick: float = 0.25,
        task_queues: Mapping[str, str] | None = None,
        default_queue: str = "default",
        clock: Clock = SYSTEM,
        metrics: SchedulerMetrics | None = None,
        schedules: Sequence[Schedule] | None = None,
    ) -> None:
        self.schedules = None if schedules is None else list(schedules)
        self.store = store
        self.metrics = metrics or SchedulerMetrics()
        self.leadership = Leadership(
            store, instance or instance_id(), lease=lease, clock=clock, metrics=self.metrics
        )
        self.loop = FireLoop(
            store,
            self.leadership,
            publish.publish,
            task_queues=dict(task_queues or {}),
            default_queue=default_queue,
            tick=tick,
            clock=clock,
            metrics=self.metrics,
            declared=self.schedules,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Sync the declared schedules, then until ``stop`` both tasks (a failure of either stops the other
        and is raised)."""
        if self.schedules is not None and not await _sync(
            self.store, self.schedules, stop, self.leadership.clock
        ):
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self.leadership.keep(stop), name="sluice-scheduler-lease")
            group.create_task(self.loop.run(stop), name="sluice-scheduler-fires")

    def healthy(self) -> bool:
        """Redis answered the lease within the last three renewals (leader or follower alike)."""
        last = self.leadership.last_ok
        return (
            last is not None
            and self.leadership.clock.monotonic() - last < 3 * self.leadership.renew_every + 2
        )


def _app(scheduler: Scheduler):  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def healthz(request: Request) -> Response:
        lead = scheduler.leadership
        body = {"ok": scheduler.healthy(), "leader": lead.held() is not None, "leader_instance": lead.holder}
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(scheduler.metrics.registry), media_type=content_type)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])


async def serve(
    settings: Settings,
    schedules: Sequence[Schedule] | None,
    *,
    task_queues: Mapping[str, str],
    fair: FairRoutes | None = None,
    host: str,
    port: int,
    lease: float = 10.0,
    tick: float = 0.25,
) -> None:
    """Run one scheduler process until SIGTERM/SIGINT. ``schedules``: the code-declared ones (synced at start
    and at the start of each term this replica leads); ``None``: it declares none and leaves them be."""
    import uvicorn

    sock = listen(host, port)
    redis = redis_client(settings, socket_timeout=2.0, socket_connect_timeout=2.0)
    store = ScheduleStore(redis, settings.prefix, timeout=min(2.0, lease / 4))
    declared = [s.queue for s in schedules or () if s.queue]
    publisher = LazyPublisher(
        settings, creatable_queues(settings, [*task_queues.values(), *declared]), fair=fair
    )
    scheduler = Scheduler(
        store,
        publisher,
        lease=lease,
        tick=tick,
        task_queues=task_queues,
        default_queue=settings.default_queue,
        schedules=schedules,
    )
    stop = asyncio.Event()
    try:
        background = asyncio.ensure_future(scheduler.run(stop))
        config = uvicorn.Config(_app(scheduler), lifespan="off", access_log=False, log_level="warning")
        bound_host, bound_port = sock.getsockname()[:2]

        def serving() -> None:
            log.info(
                "scheduler %s: lease %gs; serving http://%s:%d/metrics",
                scheduler.leadership.instance,
                lease,
                bound_host,
                bound_port,
            )

        try:
            await serve_http(config, sock, log, ready=serving)
        finally:
            stop.set()
            await background
    finally:
        sock.close()
        await publisher.aclose()
        await store.aclose()
        await redis.aclose()
    log.info("stopped")


async def _sync(
    store: ScheduleStore, schedules: Sequence[Schedule], stop: asyncio.Event, clock: Clock
) -> bool:
    """The code-declared schedules into the store (Redis down: retried every second until it answers);
    answers ``False`` if ``stop`` came first."""
    warned = False
    while True:
        try:
            report = await store.sync(schedules)
        except StoreUnavailable as e:
            if not warned:
                warned = True
                log.warning("cannot sync the declared schedules (%s); retrying", e)
            if await sleep_or_stop(clock, stop, 1.0):
                return False
            continue
        if report.added or report.updated or report.removed:
            log.info(
                "declared schedules synced: added %s; updated %s; removed %s",
                ", ".join(report.added) or "none",
                ", ".join(report.updated) or "none",
                ", ".join(report.removed) or "none",
            )
        return True
