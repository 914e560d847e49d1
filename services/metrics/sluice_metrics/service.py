"""Running the metrics service: bind, serve with uvicorn inside the service runtime
(:mod:`sluice.runtime`), drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from prometheus_client.registry import CollectorRegistry

from sluice.connection import BROKER_ERRORS
from sluice.errors import BrokerUnavailable
from sluice.redis_client import redis_client
from sluice.runtime import listen, run, serve_http
from sluice.settings import Settings
from sluice.telemetry import metrics_exchange
from sluice_metrics.app import build_app
from sluice_metrics.collectors import QueueCollector
from sluice_metrics.feed import SnapshotFeed
from sluice_metrics.fleet import Fleet
from sluice_metrics.fleet_metrics import FleetCollector
from sluice_metrics.processes import ProcessTable
from sluice_metrics.queue_stats import QueueStatsSource, delay_queues, queues_to_watch
from sluice_metrics.redis_state import RedisStateSource

__all__ = ["listen", "run", "serve"]

log = logging.getLogger("sluice.metrics")

_FEED_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, TimeoutError, *BROKER_ERRORS)


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    queues: Sequence[str] = (),
    scrape_timeout: float = 3.0,
    alive_after: float = 5.0,
    interval: float = 1.0,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish open requests and return.

    Besides HTTP: the snapshot feed (telemetry from the metrics exchange) and a sampler that reads the
    queues and Redis every ``interval`` seconds for ``/api/summary`` and the fleet metrics.
    """
    watched = queues_to_watch(settings, queues)
    sock = listen(host, port)
    registry = CollectorRegistry()
    collector = QueueCollector()
    registry.register(collector)
    table = ProcessTable(alive_after=alive_after)
    redis = redis_client(settings, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        async with (
            QueueStatsSource(
                settings, watched, timeout=scrape_timeout, optional=delay_queues(settings)
            ) as source,
            contextlib.AsyncExitStack() as stack,
            asyncio.TaskGroup() as background,
        ):
            state = RedisStateSource(redis, settings.prefix)
            stack.push_async_callback(state.aclose)
            fleet = Fleet(settings, table, source, collector, state)
            registry.register(FleetCollector(fleet))
            app = build_app(registry, source, collector, fleet)
            stop_background = asyncio.Event()
            background.create_task(_feed_loop(settings, table, stop_background), name="sluice-metrics-feed")
            background.create_task(
                _sample_loop(fleet, interval, stop_background), name="sluice-metrics-sampler"
            )
            background.create_task(
                _every(fleet.read_redis, 2 * interval, stop_background), name="sluice-metrics-redis"
            )
            config = uvicorn.Config(
                app,
                lifespan="off",
                access_log=False,
                log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=max(int(scrape_timeout * 2), 5),
            )
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host

            def serving() -> None:
                log.info("serving http://%s:%d/metrics; queues: %s", shown, bound_port, ", ".join(watched))

            try:
                await serve_http(config, sock, log, ready=serving)
            finally:
                stop_background.set()
    finally:
        sock.close()
        await redis.aclose()
    log.info("stopped")


async def _feed_loop(settings: Settings, table: ProcessTable, stop: asyncio.Event) -> None:
    """Consume snapshots until ``stop``; while the broker is not there, try again every 2 s."""
    warned = False
    while not stop.is_set():
        try:
            async with SnapshotFeed(settings, table) as feed:
                log.info("receiving telemetry snapshots from %s", metrics_exchange(settings.prefix))
                warned = False
                stopping = asyncio.ensure_future(stop.wait())
                lost = asyncio.ensure_future(feed.lost.wait())
                await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                lost.cancel()
                if stop.is_set():
                    return
                log.warning("lost the broker connection of the snapshot feed: reconnecting")
        except _FEED_ERRORS as e:
            if not warned:
                warned = True
                log.warning("cannot consume telemetry snapshots (%s); retrying", e)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await stop.wait()


async def _sample_loop(fleet: Fleet, interval: float, stop: asyncio.Event) -> None:
    """``fleet.tick()`` every ``interval`` seconds until ``stop``."""
    await _every(fleet.tick, interval, stop)


async def _every(sample: Callable[[], Awaitable[None]], interval: float, stop: asyncio.Event) -> None:
    """``sample()`` every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        try:
            await sample()
        except Exception:  # a bug in a sample must not stop the service
            log.exception("sampling the fleet failed")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
