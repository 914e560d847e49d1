"""``sluice task``: follow, await and cancel a task by its id (docs/tasks.md).

``status`` prints what Redis holds of a task (``--json``: :meth:`sluice.handles.TaskStatus.as_dict`);
``wait`` blocks until it ends (exit 0 succeeded; 1 failed, dead or cancelled; 3 timed out) and prints its
result or error; ``cancel`` records cancels, of ids or of a whole batch (``--task NAME --before TIME``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from sluice.handles import CancelReport, TaskHandles, TaskStatus

app = typer.Typer(
    help="Follow, await and cancel tasks by id (tracked tasks: docs/tasks.md).", no_args_is_help=True
)

T = TypeVar("T")
_TASK_ID = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")
_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")
WAIT_CHUNK = 3600.0  # without --timeout, wait in chunks of this many seconds (no limit in all)
EXIT_FAILED = 1
EXIT_TIMED_OUT = 3
FUTURE_SLACK_MS = 60_000  # --before may be this far in the future (clock skew), no more


def _with_handles(action: Callable[[TaskHandles], Awaitable[T]]) -> T:
    from sluice.handles import TaskHandles, TrackingUnavailable
    from sluice.redis_client import redis_client
    from sluice.settings import Settings, mask_url

    settings = Settings()

    async def go() -> T:
        redis = redis_client(settings, socket_timeout=10, socket_connect_timeout=5)
        handles = TaskHandles(redis, settings.prefix, ttl=settings.track_ttl)
        try:
            return await action(handles)
        except TrackingUnavailable as e:
            where = mask_url(settings.redis_url)
            raise TrackingUnavailable(
                f"task tracking unavailable: cannot reach Redis at {where} ({e})"
            ) from None
        finally:
            await handles.aclose()
            await redis.aclose()

    return asyncio.run(go())


def _check_ids(ids: list[str]) -> list[str]:
    for task_id in ids:
        if not _TASK_ID.match(task_id):
            raise typer.BadParameter(f"bad task id {task_id!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
    return ids


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _lines(doc: dict[str, Any]) -> list[str]:
    """The human form of a status document."""
    head = f"{doc['id']}  {doc['state']}"
    if doc.get("attempt"):
        head += f"  attempt {doc['attempt']}"
    if doc.get("generation"):
        head += f"  (replayed {doc['generation']}x)"
    out = [head]
    if doc["state"] == "unknown":
        out.append("never tracked, or its record expired (tracked tasks: @task(track=True), --track)")
        return out
    fields = [
        ("task", doc.get("task")),
        ("queue", doc.get("queue")),
        ("published", doc.get("published_ms") and _when(doc["published_ms"])),
        ("started", doc.get("started_ms") and _when(doc["started_ms"])),
        ("finished", doc.get("finished_ms") and _when(doc["finished_ms"])),
        ("worker", doc.get("worker")),
        ("reason", doc.get("reason")),
        ("next run", doc.get("next_run_ms") and _when(doc["next_run_ms"])),
        ("cancel", "requested (the worker stops it)" if doc.get("cancel_requested") else None),
    ]
    out += [f"  {name}: {value}" for name, value in fields if value]
    error = doc.get("error")
    if error:
        out.append(f"  error: {error.get('type') or '?'}: {error.get('message') or ''}")
    if doc.get("result_error"):
        out.append(f"  result: not stored: {doc['result_error']}")
    elif doc.get("result") is not None:
        out.append(f"  result: {json.dumps(doc['result'], ensure_ascii=False)}")
    history = doc.get("history") or []
    if history:
        out.append("  history:")
        for h in history:
            detail = f"  {h['detail']}" if h.get("detail") else ""
            out.append(f"    {_when(h.get('at_ms'))}  {h['state']}  attempt {h.get('attempt', '-')}{detail}")
    return out


def _show(status: TaskStatus, as_json: bool) -> None:
    doc = status.as_dict()
    if as_json:
        typer.echo(json.dumps(doc, ensure_ascii=False))
    else:
        typer.echo("\n".join(_lines(doc)))


@app.command("status")
def status(
    task_id: str = typer.Argument(..., metavar="ID", help="the task id (printed by sluice publish)"),
    as_json: bool = typer.Option(
        False, "--json", help="one JSON object: id, state, attempt, result, error, ..."
    ),
) -> None:
    """Show a task's state, attempt, times, worker, last error, result and history."""
    _check_ids([task_id])

    async def read(handles: TaskHandles) -> TaskStatus:
        return await handles.status(task_id)

    _show(_with_handles(read), as_json)


@app.command("wait")
def wait(
    task_id: str = typer.Argument(..., metavar="ID", help="the task id"),
    timeout: float | None = typer.Option(
        None, "--timeout", metavar="SECONDS", help="give up after this long (exit 3); default: no limit"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the final status as one JSON object"),
) -> None:
    """Wait until the task ends; print its result (or error). Exit 0 succeeded, 1 failed/dead/cancelled,
    3 timed out (then the last state is printed)."""
    _check_ids([task_id])
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise typer.BadParameter(f"--timeout {timeout}: must be a number of seconds over 0")

    async def block(handles: TaskHandles) -> TaskStatus:
        from sluice.handles import TERMINAL

        if timeout is not None:
            return await handles.wait(task_id, timeout)
        while True:
            got = await handles.wait(task_id, WAIT_CHUNK)
            if got.state in TERMINAL:
                return got

    from sluice.handles import State

    final = _with_handles(block)
    _show(final, as_json)
    if final.state is State.SUCCEEDED:
        return
    if final.state in (State.FAILED, State.DEAD, State.CANCELLED):
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"sluice: timed out after {timeout:g}s: the task is {final.state.value}", err=True)
    raise typer.Exit(EXIT_TIMED_OUT)


def parse_before(text: str, now_ms: int) -> int:
    """``--before``: ``now``, an ISO 8601 time (UTC when it names no zone) or Unix seconds; in ms."""
    value = text.strip()
    if value == "now":
        return now_ms
    try:
        ms = round(float(value) * 1000)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(
                f"--before {text!r}: use now, an ISO 8601 time (2026-12-02T10:00:00Z) or Unix seconds"
            ) from None
        ms = round((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    if ms > now_ms + FUTURE_SLACK_MS:
        raise typer.BadParameter(
            f"--before {text!r}: is in the future (a rule covers tasks already published)"
        )
    return ms


def _cancelled(r: CancelReport) -> str:
    if r.already_ended:
        return f"{r.id}: already {r.state.value}, left as it is (the cancel is recorded)"
    if r.requested:
        return f"{r.id}: running: its worker is asked to stop it"
    return f"{r.id}: cancelled (was {r.previous.value})"


@app.command("cancel")
def cancel(
    ids: list[str] | None = typer.Argument(None, metavar="[ID]...", help="task ids", show_default=False),
    task: str | None = typer.Option(
        None, "--task", metavar="NAME", help="with --before: every task of this name", show_default=False
    ),
    before: str | None = typer.Option(
        None,
        "--before",
        metavar="TIME",
        help="with --task: published before TIME (now, ISO 8601 such as 2026-12-02T10:00:00Z, Unix seconds)",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object a line"),
) -> None:
    """Cancel tasks: queued, deferred or retrying ones never run (any worker that gets them later acks
    them as cancelled, across restarts); running ones are asked to stop; ended ones stay as they are."""
    if ids and (task or before):
        raise typer.BadParameter("give task ids, or --task NAME --before TIME, not both")
    if not ids and not (task and before):
        raise typer.BadParameter("say what to cancel: task ids, or --task NAME --before TIME")
    if task is not None and not _TASK_NAME.match(task):
        raise typer.BadParameter(f"bad task name {task!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
    if ids:
        _check_ids(ids)

        async def by_id(handles: TaskHandles) -> list[CancelReport]:
            return list(await handles.cancel(*ids))

        for report in _with_handles(by_id):
            typer.echo(json.dumps(report.as_dict()) if as_json else _cancelled(report))
        return
    from sluice.protocol import now_ms

    assert task is not None and before is not None
    before_ms = parse_before(before, now_ms())

    async def rule(handles: TaskHandles) -> None:
        await handles.cancel_batch(task, before_ms)

    _with_handles(rule)
    doc = {"task": task, "before_ms": before_ms, "before": _when(before_ms)}
    typer.echo(
        json.dumps(doc) if as_json else f"cancelled every {task} task published before {doc['before']}"
    )
