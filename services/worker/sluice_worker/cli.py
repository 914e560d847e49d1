"""``sluice worker``: run tasks from RabbitMQ queues.

Only typer is imported at the top; the worker is imported inside the command.
"""

from __future__ import annotations

import typer

_TASKS_HELP = (
    "Python module whose @task functions to load (repeat, or comma-separate); demo tasks always load."
)
_BURST_HELP = (
    "Drain and exit 0 once its queues are empty, no task runs and no delayed copy waits in the "
    "prefix's delay tiers (for 1 s in a row): a run that ends when the work is done (tests, batch jobs)."
)
_QUEUES_HELP = (
    "Queue to consume (repeat, or comma-separate). Default: the loaded tasks' queues + the default queue."
)


def worker(
    tasks: list[str] = typer.Option([], "--tasks", "-t", metavar="MODULE", help=_TASKS_HELP),
    queues: list[str] = typer.Option([], "--queues", "-q", metavar="QUEUE", help=_QUEUES_HELP),
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", metavar="N", help="Tasks run at once [env SLUICE_CONCURRENCY]."
    ),
    prefetch: int | None = typer.Option(
        None, "--prefetch", metavar="N", help="Unacked deliveries per queue consumer [env SLUICE_PREFETCH]."
    ),
    grace_period: float | None = typer.Option(
        None,
        "--grace-period",
        metavar="S",
        help="Seconds running tasks get to finish on SIGTERM/SIGINT [env SLUICE_GRACE_PERIOD].",
    ),
    burst: bool = typer.Option(False, "--burst", help=_BURST_HELP),
) -> None:
    """Run tasks: consume queues, run each task's handler, dead-letter what cannot run."""
    from pydantic import ValidationError

    from sluice.runtime import setup_logging
    from sluice.settings import Settings
    from sluice_worker.lifecycle import Burst, run
    from sluice_worker.options import apply_options, load_registry, resolve_queues, split_names

    settings = Settings()
    try:
        settings = apply_options(
            settings, concurrency=concurrency, prefetch=prefetch, grace_period=grace_period
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise typer.BadParameter(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    registry = load_registry(split_names(tasks))
    chosen = resolve_queues(registry, split_names(queues), settings)
    setup_logging(settings.log_level)
    run(settings, registry, chosen, burst=Burst() if burst else None)


def register(app: typer.Typer) -> None:
    """Add this service's commands to the ``sluice`` app."""
    app.command("worker")(worker)
