"""``sluice scheduler``: fire the schedules (docs/schedules.md). Run two or more: one leads, the others wait.

Only typer is imported at the top; the service is imported inside the command.
"""

from __future__ import annotations

import typer

__all__ = ["register", "scheduler"]

_TASKS_HELP = (
    "Python module whose schedules (and tasks, for their queues) to load (repeat, or comma-separate)."
)


def scheduler(
    tasks: list[str] = typer.Option([], "--tasks", "-t", metavar="MODULE", help=_TASKS_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address of /healthz and /metrics"),
    port: int = typer.Option(
        9110, "--port", min=0, max=65535, help="port of /healthz and /metrics (0: any free)"
    ),
    lease: float = typer.Option(
        10.0,
        "--lease",
        min=0.5,
        max=3600,
        help="seconds the leader lease lasts unrenewed (renewed every third)",
    ),
    tick: float = typer.Option(0.25, "--tick", min=0.01, max=10, help="seconds between passes of the leader"),
) -> None:
    """Fire the schedules: one replica leads (a Redis lease with a fencing token), each occurrence once."""
    from sluice.runtime import run, setup_logging
    from sluice.schedules import load_modules
    from sluice.settings import Settings
    from sluice_scheduler.service import serve

    settings = Settings()
    names = [n.strip() for arg in tasks for n in arg.split(",") if n.strip()]
    registry, schedules = load_modules(names)
    setup_logging(settings.log_level)
    run(
        serve(
            settings,
            list(schedules.values()) if names else None,  # no --tasks: leave the declared ones be
            task_queues={name: t.queue for name, t in registry.items()},
            fair=registry.fair_routes(),  # a fair task's fires go to its tenant's sub-queue
            host=host,
            port=port,
            lease=lease,
            tick=tick,
        )
    )


def register(app: typer.Typer) -> None:
    """Add this service's command to the ``sluice`` app."""
    app.command("scheduler")(scheduler)
