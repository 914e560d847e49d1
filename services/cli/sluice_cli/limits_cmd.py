"""``sluice limits``: list, set and remove run-time rate limits (read by every worker within seconds)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from sluice.limits import LimitStore

app = typer.Typer(
    help="Rate limits changed at run time: every worker applies them within seconds.", no_args_is_help=True
)

T = TypeVar("T")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")


def _with_store(action: Callable[[LimitStore], Awaitable[T]]) -> T:
    from redis.exceptions import RedisError

    from sluice.errors import BrokerUnavailable
    from sluice.limits import LimitStore
    from sluice.redis_client import redis_client
    from sluice.settings import Settings, mask_url

    settings = Settings()

    async def go() -> T:
        redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            return await action(LimitStore(redis, settings.prefix))
        except (RedisError, OSError) as e:
            raise BrokerUnavailable(f"cannot reach Redis at {mask_url(settings.redis_url)}: {e}") from None
        finally:
            await redis.aclose()

    return asyncio.run(go())


def _check_task(task: str) -> str:
    if not _TASK_NAME.match(task):
        raise typer.BadParameter(f"bad task name {task!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
    return task


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="one JSON object instead of a table")) -> None:
    """List the run-time limits."""

    async def read(store: LimitStore) -> dict[str, Any]:
        return {name: {"rate": str(r), "burst": r.burst} for name, r in (await store.all()).items()}

    rows = _with_store(read)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no run-time limits (tasks run under their declared policies)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "rate", "burst", title="run-time rate limits")
    for name, row in rows.items():
        table.add_row(name, row["rate"], "" if row["burst"] is None else str(row["burst"]))
    Console().print(table)


@app.command("set")
def set_limit(
    task: str = typer.Argument(..., help="task name, as given to @task"),
    rate: str = typer.Argument(..., help="N/unit: 50/s, 6000/min, 10/5s, 1000/h"),
    burst: int | None = typer.Option(None, "--burst", min=1, help="runs allowed at once (default: N)"),
) -> None:
    """Limit TASK to RATE fleet-wide, replacing its declared rate limit until `sluice limits rm`."""
    from sluice.errors import ConfigError
    from sluice.policy import RateLimit

    _check_task(task)
    try:
        limit = RateLimit.parse(rate, burst=burst)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None

    async def write(store: LimitStore) -> None:
        await store.set(task, limit)

    _with_store(write)
    typer.echo(f"{task}: {limit}" + (f" burst {burst}" if burst is not None else ""))


@app.command("rm")
def rm(task: str = typer.Argument(..., help="task name")) -> None:
    """Remove TASK's run-time limit: its declared policy (if any) applies again."""
    _check_task(task)

    async def remove(store: LimitStore) -> bool:
        return await store.remove(task)

    if not _with_store(remove):
        from sluice.errors import ConfigError

        raise ConfigError(f"no run-time limit for {task!r}")
    typer.echo(f"{task}: run-time limit removed")
