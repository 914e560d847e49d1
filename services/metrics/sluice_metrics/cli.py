"""``sluice metrics``: the Prometheus endpoint of a sluice deployment.

Only typer is imported here; the HTTP stack loads inside the command.
"""

from __future__ import annotations

import typer

__all__ = ["metrics", "register"]


def metrics(
    host: str | None = typer.Option(None, "--host", help="bind address [default: SLUICE_METRICS_HOST]"),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="port, 0 for any free one [default: SLUICE_METRICS_PORT]"
    ),
    queues: list[str] = typer.Option(
        [],
        "--queues",
        "-q",
        help="extra work queues to report (repeat, or comma-separated); "
        "the default queue and the DLQ are always reported",
    ),
    scrape_timeout: float = typer.Option(
        3.0, "--scrape-timeout", min=0.1, help="seconds a scrape may spend reading RabbitMQ"
    ),
    alive_after: float = typer.Option(
        5.0, "--alive-after", min=1.0, help="a process is alive while its last snapshot is this recent (s)"
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.1, help="seconds between reads of the queues and Redis for the summary"
    ),
) -> None:
    """Serve GET /metrics, /healthz, /api/summary and the live page at /: queues, workers, tasks, limits."""
    from sluice.runtime import setup_logging
    from sluice.settings import Settings
    from sluice.topology import check_queue_name
    from sluice_metrics.service import run, serve

    settings = Settings()
    names = [q.strip() for arg in queues for q in arg.split(",") if q.strip()]
    for name in names:
        check_queue_name(name)
    setup_logging(settings.log_level)
    run(
        serve(
            settings,
            host=settings.metrics_host if host is None else host,
            port=settings.metrics_port if port is None else port,
            queues=names,
            scrape_timeout=scrape_timeout,
            alive_after=alive_after,
            interval=interval,
        )
    )


def register(app: typer.Typer) -> None:
    """Add this service's commands to the ``sluice`` app."""
    app.command("metrics")(metrics)
