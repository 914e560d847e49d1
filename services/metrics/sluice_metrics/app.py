"""The HTTP side of the metrics service: a small Starlette app.

``GET /metrics``  reads the queue stats, then renders the injected registry: Prometheus text format,
                  or OpenMetrics when the ``Accept`` header asks for it.
``GET /healthz``  200 while the service runs, with the broker state of the last read (JSON).
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sluice_metrics.collectors import QueueCollector
from sluice_metrics.queue_stats import QueueStatsSource

__all__ = ["build_app"]


def build_app(
    registry: CollectorRegistry,
    source: QueueStatsSource,
    collector: QueueCollector,
) -> Starlette:
    """The app. ``collector`` must already be registered on ``registry``; ``source`` feeds it."""

    async def metrics(request: Request) -> Response:
        collector.update(await source.read())
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=None, headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        up = collector.broker_up
        return JSONResponse({"status": "ok", "broker_up": up, "queues": list(source.queues)})

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
