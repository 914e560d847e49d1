"""The HTTP side of the metrics service: a small Starlette app.

``GET /metrics``      reads the queue stats, then renders the injected registry: Prometheus text format,
                      or OpenMetrics when the ``Accept`` header asks for it.
``GET /healthz``      200 while the service runs, with the broker state of the last read (JSON).
``GET /api/summary``  the fleet as JSON, for ``sluice status`` and the live page (needs a ``fleet``).
``GET /``             the live page (one static HTML file polling ``/api/summary``).
"""

from __future__ import annotations

from importlib import resources

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from sluice_metrics.collectors import QueueCollector
from sluice_metrics.fleet import Fleet
from sluice_metrics.queue_stats import QueueStatsSource

__all__ = ["build_app", "live_page"]


def live_page() -> str:
    """The live page's HTML (package data ``static/index.html``)."""
    return resources.files("sluice_metrics").joinpath("static/index.html").read_text(encoding="utf-8")


def build_app(
    registry: CollectorRegistry,
    source: QueueStatsSource,
    collector: QueueCollector,
    fleet: Fleet | None = None,
) -> Starlette:
    """The app. ``collector`` must already be registered on ``registry``; ``source`` feeds it."""
    page = live_page() if fleet is not None else ""

    async def metrics(request: Request) -> Response:
        collector.update(await source.read())
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=None, headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        up = collector.broker_up
        return JSONResponse({"status": "ok", "broker_up": up, "queues": list(source.queues)})

    async def summary(request: Request) -> Response:
        assert fleet is not None
        return JSONResponse(fleet.summary(), headers={"Cache-Control": "no-store"})

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    if fleet is not None:
        routes += [Route("/api/summary", summary, methods=["GET"]), Route("/", index, methods=["GET"])]
    return Starlette(routes=routes)
