"""``sluice limits``: list, set and remove run-time rate limits (read by every worker within seconds), and
see and end the fleet-wide freezes an upstream's throttling set (``ls``, ``thaw``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from sluice.limits import LimitStore
    from sluice.policy import RateLimit
    from sluice.resilience import Freeze
    from sluice.resilience.adaptive import AdaptiveReading

app = typer.Typer(
    help="Rate limits changed at run time (every worker applies them within seconds), and the freezes an "
    "upstream's throttling set.",
    no_args_is_help=True,
)

T = TypeVar("T")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")
_KEY = re.compile(r"^[^{}\s]{1,300}$")  # a limit key or a throttle scope: no hash-tag braces, no blanks


def _with_store(action: Callable[[LimitStore], Awaitable[T]]) -> T:
    return _with_redis(lambda store, redis, prefix: action(store))


def _with_redis(action: Callable[[LimitStore, Redis | RedisCluster, str], Awaitable[T]]) -> T:
    from redis.exceptions import RedisError

    from sluice.errors import BrokerUnavailable
    from sluice.limits import LimitStore
    from sluice.redis_client import redis_client
    from sluice.resilience import BackendUnavailable
    from sluice.settings import Settings, mask_url

    settings = Settings()

    async def go() -> T:
        redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        try:
            return await action(LimitStore(redis, settings.prefix), redis, settings.prefix)
        except (RedisError, OSError, BackendUnavailable) as e:
            raise BrokerUnavailable(f"cannot reach Redis at {mask_url(settings.redis_url)}: {e}") from None
        finally:
            await redis.aclose()

    return asyncio.run(go())


def _check_task(task: str) -> str:
    if not _TASK_NAME.match(task):
        raise typer.BadParameter(f"bad task name {task!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
    return task


def _rows(
    limits: dict[str, RateLimit], freezes: list[Freeze], slowed: Sequence[AdaptiveReading] = ()
) -> list[dict[str, Any]]:
    """One row per run-time limit, per freeze and per adaptive rate below its declared one (a freeze or
    an adaptive rate of a task's own key shares its row; a per-tenant key ``TASK:tenant`` has its own)."""
    frozen = {f.name: f for f in freezes}
    reduced = {a.name: a for a in slowed}
    rows: list[dict[str, Any]] = []
    for task, limit in limits.items():
        rows.append(_row(task, task, limit, frozen.pop(task, None), reduced.pop(task, None)))
    for key in sorted({*frozen, *reduced}):
        f = frozen.get(key)
        task = _task_of(key, f)
        rows.append(_row(task, key, limits.get(task), f, reduced.get(key)))
    return rows


def _task_of(key: str, freeze: Freeze | None) -> str:
    """The task of a key listed for its freeze (the worker writes the reason "TASK: why") or its adaptive
    rate (a limit key is TASK or TASK:tenant)."""
    if freeze is None:
        return key.split(":", 1)[0]
    return freeze.reason.split(": ", 1)[0] if ": " in freeze.reason else key


def _row(
    task: str, key: str, limit: RateLimit | None, freeze: Freeze | None, adaptive: AdaptiveReading | None
) -> dict[str, Any]:
    per_second = None if limit is None else limit.limit / limit.period
    is_adaptive = adaptive is not None or (limit is not None and limit.adaptive)
    if adaptive is not None:  # a rate its throttles cut: below the declared one
        per_second = round(adaptive.per_second, 3)
    return {
        "task": task,
        "key": key,
        "rate": None if limit is None else str(limit).split(" ")[0],
        "window": None if limit is None else limit.window,
        "burst": None if limit is None else limit.burst,
        "frozen_until": None if freeze is None else freeze.until.isoformat(timespec="milliseconds"),
        "frozen_for": None if freeze is None else round(max(freeze.remaining, 0.0), 3),
        "frozen_by": None if freeze is None else freeze.reason,
        "effective_rate": 0.0 if freeze is not None else per_second,
        "adaptive": is_adaptive,
        "adaptive_rate": per_second if is_adaptive else None,
    }


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="a JSON array of rows instead of a table")) -> None:
    """List the run-time limits and the frozen keys (until when, and what froze them).

    Each row: task, key, rate, window (gcra or sliding), burst, frozen_until (UTC, or null), frozen_for
    (seconds left), frozen_by, effective_rate (tasks per second the limit admits now: 0 while frozen, an
    adaptive limit's rate as its throttles left it; null without a run-time limit), adaptive, and
    adaptive_rate (an adaptive limit's rate per second, frozen or not; else null).
    """

    async def read(store: LimitStore, redis: Redis | RedisCluster, prefix: str) -> list[dict[str, Any]]:
        from sluice.resilience import Freezes, KeySpace
        from sluice.resilience.adaptive import adaptive_rates

        keys = KeySpace(prefix)
        return _rows(
            await store.all(),
            await Freezes(redis, keys=keys).frozen(),
            await adaptive_rates(redis, keys=keys),
        )

    rows = _with_redis(read)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no run-time limits and no frozen keys (tasks run under their declared policies)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="limits")
    table.add_column("task", no_wrap=True)
    table.add_column("key or scope", no_wrap=True)
    for col in ("rate", "frozen until (UTC)", "tasks/s"):
        table.add_column(col)
    for row in rows:
        rate = "" if row["rate"] is None else f"{row['rate']} {row['window']}"
        if row["adaptive"]:
            rate += " adaptive"
        if row["burst"] is not None:
            rate += f" burst {row['burst']}"
        frozen = ""
        if row["frozen_until"] is not None:
            frozen = f"{row['frozen_until'][11:19]} ({row['frozen_for']:.0f} s left)"
        eff = row["effective_rate"]
        table.add_row(row["task"], row["key"], rate, frozen, "" if eff is None else f"{eff:g}")
    Console().print(table)


@app.command("set")
def set_limit(
    task: str = typer.Argument(..., help="task name, as given to @task"),
    rate: str = typer.Argument(
        ...,
        help="N/unit, then optionally a window or adaptive: 50/s, 6000/min, 10/5s, 1000/h, '50/s sliding', "
        "'200/s adaptive'",
    ),
    burst: int | None = typer.Option(None, "--burst", min=1, help="runs allowed at once (default: N)"),
) -> None:
    """Limit TASK to RATE fleet-wide, replacing its declared rate limit until `sluice limits rm`.

    A window after the rate says how it counts: gcra (the default: smooth, bursts up to --burst) or sliding
    (never more than N in any window of the period; takes no --burst). 'adaptive' after it (GCRA only):
    each upstream throttle halves the fleet's effective rate, each quiet 5 s adds a tenth of N back."""
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


@app.command("thaw")
def thaw(
    key: str = typer.Argument(..., help="a frozen key or scope, as `sluice limits ls` shows it"),
) -> None:
    """End the freeze of KEY now: every worker admits its tasks again (at their rate limit)."""
    if not _KEY.match(key):
        raise typer.BadParameter(f"bad key {key!r}: 1-300 characters, no braces or blanks")

    async def end(store: LimitStore, redis: Redis | RedisCluster, prefix: str) -> bool:
        from sluice.resilience import Freezes, KeySpace

        return await Freezes(redis, keys=KeySpace(prefix)).thaw(key)

    if not _with_redis(end):
        from sluice.errors import ConfigError

        raise ConfigError(f"{key!r} is not frozen (sluice limits ls lists the frozen keys)")
    typer.echo(f"{key}: thawed")


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
