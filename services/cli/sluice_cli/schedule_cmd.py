"""``sluice schedule``: add, list, remove, pause, resume and fire schedules at run time (docs/schedules.md);
and :func:`register`, which also adds ``sluice scheduler`` (the service, :mod:`sluice_scheduler.cli`).

The schedules live in Redis, fleet-wide: every scheduler replica reads them on its next pass (within a
quarter of a second). A bad cron expression, time zone, interval or payload is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from sluice.schedules import ScheduleStore

__all__ = ["app", "register"]

app = typer.Typer(
    help="Periodic schedules kept in Redis, fired by `sluice scheduler` (each occurrence once).",
    no_args_is_help=True,
)

T = TypeVar("T")


def register(root: typer.Typer) -> None:
    """``sluice schedule ...`` and ``sluice scheduler`` on the ``sluice`` app."""
    from sluice_scheduler import cli as scheduler_cli

    root.add_typer(app, name="schedule")
    scheduler_cli.register(root)


def _with_store(action: Callable[[ScheduleStore], Awaitable[T]]) -> T:
    from sluice.redis_client import redis_client
    from sluice.schedules import ScheduleStore, StoreUnavailable
    from sluice.settings import Settings, mask_url

    settings = Settings()

    async def go() -> T:
        redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            async with ScheduleStore(redis, settings.prefix, timeout=5.0) as store:
                return await action(store)
        except StoreUnavailable as e:
            where = mask_url(settings.redis_url)
            raise StoreUnavailable(f"cannot reach Redis at {where}: {e}") from None
        finally:
            await redis.aclose()

    return asyncio.run(go())


@app.command("add")
def add(
    name: str = typer.Argument(..., help="the schedule's name: 1-150 of A-Z a-z 0-9 _ - ."),
    task: str = typer.Option(..., "--task", help="the task to fire"),
    cron: str | None = typer.Option(
        None, "--cron", metavar="EXPR", help='cron expression ("0 6 * * *"; 6 fields: seconds first)'
    ),
    every: str | None = typer.Option(None, "--every", metavar="DURATION", help="fixed interval: 30s, 5m, 1h"),
    tz: str = typer.Option("UTC", "--tz", metavar="ZONE", help="IANA time zone of --cron"),
    payload: str | None = typer.Option(
        None, "--payload", metavar="JSON", help="the task's payload (an object)"
    ),
    queue: str | None = typer.Option(None, "--queue", metavar="Q", help="queue (default: the default queue)"),
    catch_up: str = typer.Option(
        "latest", "--catch-up", metavar="skip|latest|all", help="missed occurrences"
    ),
    max_catch_up: int = typer.Option(
        100, "--max-catch-up", min=1, max=10_000, help="bound of --catch-up all"
    ),
    jitter: str = typer.Option("0", "--jitter", metavar="DURATION", help="spread each fire up to this late"),
) -> None:
    """Add or replace schedule NAME (a new timing counts its occurrences from now)."""
    from sluice.errors import ConfigError
    from sluice.schedules import build

    try:
        schedule = build(
            name,
            task,
            cron=cron,
            every=every,
            tz=tz,
            payload=payload,
            queue=queue,
            jitter=jitter,
            catch_up=catch_up,
            max_catch_up=max_catch_up,
        )
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None

    async def save(store: ScheduleStore) -> bool:
        return await store.save(schedule, "runtime")

    created = _with_store(save)
    typer.echo(f"{name}: {'added' if created else 'updated'} ({schedule.spec}, {schedule.tz}) -> {task}")


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="one JSON array of rows instead of a table"),
) -> None:
    """List the schedules: task, timing, next and last fire (with its task id), and who leads."""
    from sluice.schedules import row

    async def read(store: ScheduleStore) -> tuple[list[dict[str, Any]], str | None]:
        leader = await store.leader()
        return [row(e) for e in await store.entries()], None if leader is None else leader.holder

    rows, leader = _with_store(read)
    if as_json:
        typer.echo(json.dumps([{**r, "leader": leader} for r in rows]))
        return
    if not rows:
        typer.echo(f"no schedules (leader: {leader or 'none'})")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "name",
        "task",
        "spec",
        "tz",
        "next fire",
        "last fire",
        "last task id",
        "fires",
        "caught up",
        "skipped",
        title=f"schedules (leader: {leader or 'none'})",
    )
    for r in rows:
        nxt = "paused" if r["paused"] else r["next_fire"] or "-"
        table.add_row(
            r["name"],
            r["task"],
            r["spec"],
            r["tz"],
            nxt,
            r["last_fire"] or "-",
            r["last_task_id"] or "-",
            *(str(r[k]) for k in ("fires", "caught_up", "skipped")),
        )
    Console(width=200).print(table)


def _one(name: str, action: Callable[[ScheduleStore], Awaitable[T]]) -> T:
    from sluice.errors import ConfigError
    from sluice.schedules import check_name

    try:
        check_name(name)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    return _with_store(action)


@app.command("rm")
def rm(name: str = typer.Argument(..., help="the schedule's name")) -> None:
    """Remove schedule NAME (one declared in code comes back when a scheduler starts with that code)."""
    from sluice.schedules import UnknownSchedule

    async def remove(store: ScheduleStore) -> bool:
        return await store.remove(name)

    if not _one(name, remove):
        raise UnknownSchedule(f"no schedule named {name!r}")
    typer.echo(f"{name}: removed")


@app.command("pause")
def pause(name: str = typer.Argument(..., help="the schedule's name")) -> None:
    """Pause NAME: no fire until it is resumed."""

    async def go(store: ScheduleStore) -> None:
        await store.set_paused(name, True)

    _one(name, go)
    typer.echo(f"{name}: paused")


@app.command("resume")
def resume(name: str = typer.Argument(..., help="the schedule's name")) -> None:
    """Resume NAME, from now: what fell due while it was paused is not caught up."""

    async def go(store: ScheduleStore) -> None:
        await store.set_paused(name, False)

    _one(name, go)
    typer.echo(f"{name}: resumed")


@app.command("run")
def run(name: str = typer.Argument(..., help="the schedule's name")) -> None:
    """Fire NAME once, now (its timing is unchanged); prints the task id once the broker confirmed it."""
    from sluice.protocol import now_ms
    from sluice.publisher import Publisher, creatable_queues
    from sluice.schedules import run_now
    from sluice.settings import Settings

    settings = Settings()

    async def go(store: ScheduleStore) -> str:
        entry = await store.get(name)
        queues = creatable_queues(settings, [entry.schedule.queue] if entry.schedule.queue else [])
        async with Publisher(settings, name="sluice-schedule-run", creatable=queues) as publisher:
            return await run_now(
                publisher, store, name, default_queue=settings.default_queue, now_ms=now_ms()
            )

    typer.echo(_one(name, go))
