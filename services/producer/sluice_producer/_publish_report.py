"""What ``sluice publish`` reports as it goes (see :mod:`._publish_cmd`): ids on stdout, failures, duplicates
and outage notices on stderr, an optional progress bar, and the closing summary (or ``--json`` document).

stdout: the id of every confirmed task, in input order, written as it is confirmed (flushed at least every
:data:`FLUSH_EVERY` seconds); with ``--json`` one document whose ``ids`` list is written id by id and whose
counts close it. A duplicate (its unique key held by another task) writes the holder's id instead, when it
is found (so it may come before ids still awaiting their confirm).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, TextIO

from sluice_producer.bulk import Failure, StreamReport

__all__ = [
    "FLUSH_EVERY",
    "KEEP_DUPLICATES",
    "SHOW_FAILURES",
    "ProgressBar",
    "Reporter",
    "Stdout",
    "describe",
    "failure_doc",
    "flush_every",
    "one_line",
    "show_progress",
]

SHOW_FAILURES = 5  # failures (and duplicates) listed one per line on stderr; the rest are counted
KEEP_DUPLICATES = 1000  # duplicates listed in --json's duplicate_of; the rest are counted
FLUSH_EVERY = 0.2  # seconds: confirmed ids reach stdout at least this often


class ProgressBar:
    """A rich progress bar on stderr, or nothing. ``total`` None (stdin): a count and a rate."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns: list[Any] = [TextColumn("publishing")]
            if total is None:
                columns.append(TextColumn("{task.completed:,} tasks"))
            else:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
            if total is not None:
                columns.append(TimeRemainingColumn())
            self._bar = Progress(*columns, console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task("publish", total=total, rate="")
        self._start = time.monotonic()
        self._done = 0

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        self._done += 1
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._start, 1e-9)
            self._bar.update(self._task, advance=1, rate=f"{self._done / elapsed:,.0f}/s")


def show_progress(choice: bool | None, total: int | None, stderr: TextIO) -> bool:
    """Auto: a bar only for bulk work (a stream counts as bulk) on an interactive stderr."""
    bulk = total is None or total > 1
    if choice is not None:
        return choice and bulk
    return bulk and stderr.isatty()


class Stdout:
    """Buffered writes to stdout; a closed pipe (``| head``) ends the output, not the publishing."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed = False
        self._dirty = False

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self._stream.write(text)
            self._dirty = True
        except BrokenPipeError:
            self._close()

    def flush(self) -> None:
        if self._dirty and not self.closed:
            self._dirty = False
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self.closed = True
        # what is left in the buffer would fail again at exit: point the descriptor at /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


class Reporter:
    """The :class:`~sluice_producer.bulk.Sink` of one run: ids on stdout, failures on stderr."""

    def __init__(self, out: Stdout, as_json: bool, bar: ProgressBar, give_up_after: float) -> None:
        self._out = out
        self._json = as_json
        self._bar = bar
        self._give_up_after = give_up_after
        self._first = True
        self._duplicates: list[dict[str, str]] = []
        self._shown = 0
        self._since = 0.0
        if as_json:
            out.write('{"ids": [')

    def confirmed(self, task_id: str) -> None:
        if self._json:
            self._out.write(f'"{task_id}"' if self._first else f', "{task_id}"')
            self._first = False
        else:
            self._out.write(task_id + "\n")
        self._bar.advance()

    def duplicate(self, where: str, existing: str) -> None:
        """Not published: ``existing`` holds the unique key. Its id goes to stdout (the task to follow)."""
        if self._json:
            if len(self._duplicates) < KEEP_DUPLICATES:
                self._duplicates.append({"where": where, "duplicate_of": existing})
        else:
            self._out.write(existing + "\n")
            if len(self._duplicates) < SHOW_FAILURES:
                self._duplicates.append({"where": where, "duplicate_of": existing})
                sys.stderr.write(
                    f"sluice: {where}: not published, duplicate of {existing} (unique key held)\n"
                )
        self._bar.advance()

    def failed(self, failure: Failure) -> None:
        self._shown += 1
        if self._shown <= SHOW_FAILURES:
            sys.stderr.write(f"sluice: error: {describe(failure)}\n")
        self._bar.advance()

    def outage(self, error: BaseException | None) -> None:
        if self._give_up_after <= 0:
            return
        if error is not None:
            self._since = time.monotonic()
            sys.stderr.write(
                f"sluice: broker unavailable ({one_line(error)}); paused: what was not confirmed is "
                f"published again once it is back (giving up after {self._give_up_after:g}s)\n"
            )
        else:
            sys.stderr.write(f"sluice: the broker is back after {time.monotonic() - self._since:.1f}s\n")

    def finish(self, report: StreamReport, elapsed: float) -> None:
        rate = report.published / elapsed if elapsed > 0 else 0.0
        if self._json:
            rest = {
                "published": report.published,
                "failed": report.failed,
                "invalid": report.invalid,
                "not_confirmed": report.not_confirmed,
                "republished": report.republished,
                "duplicates": report.duplicates,
                "duplicate_of": self._duplicates,
                "gave_up": report.gave_up,
                "elapsed_s": round(elapsed, 3),
                "rate_per_s": round(rate, 1),
                "failures": [failure_doc(f) for f in report.failures],
                "failures_omitted": report.failed - len(report.failures),
            }
            self._out.write("], " + json.dumps(rest)[1:] + "\n")
        self._out.flush()
        if report.failed > SHOW_FAILURES:
            sys.stderr.write(f"sluice: error: ... and {report.failed - SHOW_FAILURES} more failures\n")
        if report.gave_up:
            sys.stderr.write(
                f"sluice: error: gave up: the broker was unavailable for {self._give_up_after:g}s; "
                f"{report.not_confirmed} tasks not confirmed (their ids are not on stdout: publish them again)\n"
            )
        elif report.not_confirmed:
            sys.stderr.write(f"sluice: error: {report.not_confirmed} tasks not confirmed\n")
        if report.published == report.failed == report.duplicates == 0:
            sys.stderr.write("published 0, failed 0: no tasks in the input\n")
            return
        dups = f", duplicates {report.duplicates}" if report.duplicates else ""
        sys.stderr.write(
            f"published {report.published}, failed {report.failed}, republished {report.republished}{dups} "
            f"in {elapsed:.2f}s ({rate:,.0f}/s)\n"
        )


def describe(f: Failure) -> str:
    if f.task_id is None:
        return f.message
    return f"task #{f.index + 1} ({f.where}) id {f.task_id} not confirmed: {one_line(f.error)}"


def failure_doc(f: Failure) -> dict[str, Any]:
    return {"index": f.index, "where": f.where, "id": f.task_id, "error": f.message}


async def flush_every(out: Stdout) -> None:
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        out.flush()


def one_line(e: BaseException | None) -> str:
    return " ".join(str(e).split()) or type(e).__name__
