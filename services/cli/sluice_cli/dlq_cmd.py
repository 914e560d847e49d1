"""``sluice dlq``: list, show, replay and purge the dead-letter queue.

``sluice dlq ls`` prints one line per dead letter that fits the terminal (id whole, task and reason cut
with an ellipsis when they must be, age, attempts); ``--wide`` the full table (queue, detail, time),
``--json`` one JSON object a line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from sluice.deadletters import DeadLetter

app = typer.Typer(help="Inspect, replay and purge the dead-letter queue.", no_args_is_help=True)

T = TypeVar("T")
_GAP = "  "  # between the columns of the compact listing


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _settings() -> Any:
    from sluice.settings import Settings

    return Settings()


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _selector(
    ids: list[str] | None, task: str | None, reason: str | None
) -> Any:  # Callable[[DeadLetter], bool]
    wanted = set(ids or [])

    def select(d: DeadLetter) -> bool:
        return (
            (not wanted or d.id in wanted)
            and (task is None or d.task == task)
            and (reason is None or d.reason == reason)
        )

    return select


def _dead_at_ms(d: DeadLetter) -> int | None:
    """When it was dead-lettered: the worker's header, else the broker's ``x-death`` time."""
    if d.dead_at_ms is not None:
        return d.dead_at_ms
    deaths = d.headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        at = deaths[0].get("time")
        if isinstance(at, datetime):
            return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)
    return None


def _age(ms: int | None, now_ms: int) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``; ``-`` when unknown."""
    if ms is None:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _printable(text: str) -> str:
    """One line whatever the headers held: control characters become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _ellipsis() -> str:
    try:
        "\u2026".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "~"
    return "\u2026"


def _fit(text: str, width: int, mark: str) -> str:
    """``text`` cut to ``width`` characters, the cut marked."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + mark if width > 0 else ""


def _compact(rows: list[DeadLetter], total: int, width: int) -> list[str]:
    """The default listing: a header, one line per dead letter, a footer; no line wider than ``width``."""
    if not rows:
        return ["no dead letters" if total == 0 else f"no dead letters match ({total} in the DLQ)"]
    now, mark = int(time.time() * 1000), _ellipsis()
    cells = [
        (
            _printable(d.id),
            _printable(d.task or "-"),
            _printable(d.reason),
            _age(_dead_at_ms(d), now),
            "-" if d.attempt is None else str(d.attempt),
        )
        for d in rows
    ]
    head = ("ID", "TASK", "REASON", "AGE", "ATTEMPTS")
    wi, wt, wr, wa, wn = (max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head))
    room = width - wa - wn - 3 * len(_GAP) - 1  # for id, task and reason
    if wi + wt + wr > room:  # the id stays whole while the terminal leaves 12 columns beside it
        wi = min(wi, max(8, room - 12))
        rest = max(0, room - wi)
        # reasons are a short vocabulary: 15 columns show all but retry_budget_exhausted whole
        reason = min(wr, max(rest - wt, min(15, rest - 8)))
        wt = min(wt, rest - reason)
        wr = min(wr, rest - wt)
    lines = []
    for c in (head, *cells):
        fields = (
            _fit(c[0], wi, mark).ljust(wi),
            _fit(c[1], wt, mark).ljust(wt),
            _fit(c[2], wr, mark).ljust(wr),
        )
        line = _GAP.join((*fields, c[3].rjust(wa))) + " " + c[4].rjust(wn)
        lines.append(_fit(line, width, mark))
    lines.append(_fit(f"{len(rows)} of {total} dead letters; --wide or --json for more", width, mark))
    return lines


def _table(rows: list[DeadLetter], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "task", "queue", "reason", "detail", "dead at (UTC)", "attempt", title=title)
    for d in rows:
        detail = d.detail if len(d.detail) <= 60 else d.detail[:57] + "..."
        table.add_row(
            d.id, d.task or "", d.queue or "", d.reason, detail, _when(d.dead_at_ms), str(d.attempt or "")
        )
    Console().print(table)


@app.command("ls")
def ls(
    task: str | None = typer.Option(None, "--task", help="only this task name"),
    reason: str | None = typer.Option(
        None, "--reason", help="only this reason (not_json, handler_error, ...)"
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="show at most this many"),
    wide: bool = typer.Option(
        False, "--wide", help="the full table: queue, detail and time too (wants a wide terminal)"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="one JSON object a line (every field but headers, body and traceback)"
    ),
) -> None:
    """List dead letters, oldest first (nothing is removed).

    One line each by default, fitted to the terminal: id, task, reason, age (since it was
    dead-lettered) and attempts. `sluice dlq show ID` prints one whole.
    """
    from sluice.deadletters import DeadLetterQueue

    if wide and as_json:
        raise typer.BadParameter("--wide and --json cannot be used together")

    async def go() -> tuple[list[DeadLetter], int]:
        async with DeadLetterQueue(_settings()) as dlq:
            return await dlq.browse(_selector(None, task, reason), limit), await dlq.count()

    rows, total = _run(go())
    if as_json:
        for d in rows:
            skip = ("headers", "body", "traceback")
            typer.echo(json.dumps({k: v for k, v in d.as_dict().items() if k not in skip}))
        return
    if wide:
        _table(rows, f"dead letters: showing {len(rows)} of {total}")
        return
    for line in _compact(rows, total, shutil.get_terminal_size((80, 24)).columns):
        typer.echo(line)


@app.command("show")
def show(
    task_id: str = typer.Argument(..., metavar="ID", help="the task id (message id)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show one dead letter whole: payload, headers and error."""
    from sluice.deadletters import DeadLetterQueue
    from sluice.errors import SluiceError

    async def go() -> list[DeadLetter]:
        async with DeadLetterQueue(_settings()) as dlq:
            return await dlq.browse(_selector([task_id], None, None), 1)

    found = _run(go())
    if not found:
        raise SluiceError(f"no dead letter with id {task_id!r}")
    d = found[0].as_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    c = Console()
    c.print(f"[bold]{d['id']}[/] task={d['task']} queue={d['queue']} attempt={d['attempt']}")
    c.print(f"reason: [red]{d['reason']}[/]  at {_when(d['dead_at_ms'])} UTC")
    c.print(f"detail: {d['detail']}")
    if d["error_type"]:
        from rich.markup import escape

        c.print(
            f"error: [red]{escape(d['error_type'])}[/]: {escape(d['error_message'] or '')}", highlight=False
        )
        c.print(
            f"failures: first {_when(d['first_failure_ms'])} UTC, last {_when(d['last_failure_ms'])} UTC, "
            f"after {d['attempt']} attempt(s)"
        )
        if d["traceback"]:
            c.print("traceback (last lines):", markup=False)
            c.print(d["traceback"], markup=False, highlight=False)
    c.print("headers:", Pretty(d["headers"]))
    c.print("body:", d["body"])


@app.command("replay")
def replay(
    ids: list[str] | None = typer.Option(None, "--id", help="replay this id (repeatable)"),
    task: str | None = typer.Option(None, "--task", help="replay every dead letter of this task"),
    reason: str | None = typer.Option(None, "--reason", help="replay every dead letter with this reason"),
    replay_all: bool = typer.Option(False, "--all", help="replay every dead letter"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be replayed, change nothing"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Republish dead letters to their queue with the attempt count reset (confirmed before removal)."""
    from sluice.deadletters import DeadLetterQueue, ReplayReport
    from sluice.errors import ConfigError

    if not (ids or task or reason or replay_all):
        raise ConfigError("say what to replay: --id, --task, --reason or --all")

    async def go() -> ReplayReport:
        async with DeadLetterQueue(_settings()) as dlq:
            return await dlq.replay(_selector(ids, task, reason), dry_run=dry_run)

    report = _run(go())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "replayed": [d.id for d in report.replayed],
                    "skipped_no_queue": [d.id for d in report.skipped_no_queue],
                    "failed": [{"id": d.id, "error": str(e)} for d, e in report.failed],
                    "untracked": [{"id": d.id, "error": str(e)} for d, e in report.untracked],
                }
            )
        )
    else:
        verb = "would replay" if dry_run else "replayed"
        typer.echo(f"{verb} {len(report.replayed)} dead letter(s)")
        for d in report.skipped_no_queue:
            typer.echo(f"skipped {d.id}: no task or queue recorded, cannot route it", err=True)
        for d, e in report.failed:
            typer.echo(f"failed {d.id}: {e} (left in the DLQ)", err=True)
    for d, e in report.untracked:
        typer.echo(f"warning: {d.id} replayed, but its tracked status is not queued again: {e}", err=True)
    if report.failed or report.skipped_no_queue:
        raise typer.Exit(1)


@app.command("purge")
def purge(yes: bool = typer.Option(False, "--yes", "-y", help="do not ask")) -> None:
    """Delete every dead letter (asks first)."""
    from sluice.deadletters import DeadLetterQueue
    from sluice.errors import ConfigError

    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("refusing to purge without --yes when not at a terminal")
        typer.confirm("Delete every message in the dead-letter queue?", abort=True)

    async def go() -> int:
        async with DeadLetterQueue(_settings()) as dlq:
            return await dlq.purge()

    typer.echo(f"purged {_run(go())} dead letter(s)")
