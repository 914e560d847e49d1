"""The body of ``sluice publish``: check the input, publish it as a stream, report as it goes.

stdout: the id of every confirmed task, in input order, written as it is confirmed (flushed at least
every :data:`FLUSH_EVERY` seconds); with ``--json`` one document whose ``ids`` list is written id by id
and whose counts close it. stderr: broker outage notices, the first :data:`SHOW_FAILURES` failures as
they happen, then a summary. Memory holds the tasks in flight and a bounded list of failures, never
the input.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sluice.errors import BrokerUnavailable
from sluice.publisher import Publisher, creatable_queues
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice_producer import _loop, inputs
from sluice_producer.bulk import Failure, StreamReport, publish_stream
from sluice_producer.handled import HandleOps
from sluice_producer.inputs import Bad, Item, Rules, Template
from sluice_producer.known import known_registry

SHOW_FAILURES = 5  # failures (and duplicates) listed one per line on stderr; the rest are counted
KEEP_DUPLICATES = 1000  # duplicates listed in --json's duplicate_of; the rest are counted
FLUSH_EVERY = 0.2  # seconds: confirmed ids reach stdout at least this often


@dataclass(frozen=True, slots=True)
class PublishArgs:
    task: str | None
    payload: str | None
    payload_file: Path | None
    stdin: bool
    envelopes: bool
    count: int
    queue: str | None
    idempotency_key: str | None
    trace_id: str | None
    delay: str | None
    as_json: bool
    progress: bool | None
    tasks: list[str]
    strict: bool
    give_up_after: float = 60.0
    check: bool = False
    create_queue: bool = False
    track: bool = False
    unique_key: str | None = None
    unique_for: float | None = None
    unique_release: str | None = None


class _Progress:
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

    def __enter__(self) -> _Progress:
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


class _Stdout:
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


class _Reporter:
    """The :class:`~sluice_producer.bulk.Sink` of one run: ids on stdout, failures on stderr."""

    def __init__(self, out: _Stdout, as_json: bool, bar: _Progress, give_up_after: float) -> None:
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
                f"sluice: broker unavailable ({_one_line(error)}); paused: what was not confirmed is "
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
    return f"task #{f.index + 1} ({f.where}) id {f.task_id} not confirmed: {_one_line(f.error)}"


def failure_doc(f: Failure) -> dict[str, Any]:
    return {"index": f.index, "where": f.where, "id": f.task_id, "error": f.message}


async def _flush_every(out: _Stdout) -> None:
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        out.flush()


async def run(
    args: PublishArgs,
    settings: Settings,
    entries: Callable[[], AsyncIterator[Item | Bad]],
    total: int | None,
    fixed_queue: str | None,
    registry: Registry | None,
) -> int:
    """Publish the stream; print ids on stdout and a summary on stderr. Returns the exit status."""
    start = time.monotonic()
    telemetry = telemetry_for(settings, "producer")  # one final snapshot on exit: the published counts
    creatable = (
        None if args.create_queue else creatable_queues(settings, registry.queues() if registry else ())
    )
    out = _Stdout(sys.stdout)
    async with (
        SnapshotPublisher(settings, telemetry),
        Publisher(settings, name="sluice-publish", creatable=creatable) as publisher,
        HandleOps(settings) as ops,  # Redis only for tasks with --track / --unique-key (or in envelopes)
    ):
        if fixed_queue is not None:  # every task goes there: an unknown queue refuses the run up front
            try:
                async with asyncio.timeout(settings.publish_timeout):
                    await publisher.ensure_queue(fixed_queue)
            except TimeoutError:
                raise BrokerUnavailable(
                    f"declaring queue {fixed_queue!r} took over {settings.publish_timeout:g}s"
                ) from None
        with _Progress(total, show_progress(args.progress, total, sys.stderr)) as bar:
            sink = _Reporter(out, args.as_json, bar, args.give_up_after)
            flusher = asyncio.create_task(_flush_every(out))
            try:
                report = await publish_stream(
                    publisher, entries(), sink, give_up_after=args.give_up_after, ops=ops
                )
            finally:
                flusher.cancel()
        for queue, n in report.per_queue.items():
            telemetry.published(queue, n)
    sink.finish(report, time.monotonic() - start)
    return 1 if report.failed else 0


async def check(args: PublishArgs, entries: AsyncIterator[Item | Bad], copies: int) -> int:
    """``--check``: every input checked, nothing published, no broker."""
    valid = invalid = 0
    failures: list[Failure] = []
    async for entry in entries:
        if isinstance(entry, Bad):
            invalid += 1
            failure = Failure(valid + invalid - 1, entry.where, None, entry.error)
            if invalid <= SHOW_FAILURES:
                sys.stderr.write(f"sluice: error: {failure.message}\n")
            if len(failures) < 1000:
                failures.append(failure)
        else:
            valid += copies
    if invalid > SHOW_FAILURES:
        sys.stderr.write(f"sluice: error: ... and {invalid - SHOW_FAILURES} more failures\n")
    if args.as_json:
        doc = {"checked": valid + invalid, "valid": valid, "invalid": invalid}
        sys.stdout.write(json.dumps({**doc, "failures": [failure_doc(f) for f in failures]}) + "\n")
    sys.stderr.write(f"checked {valid + invalid} tasks: {invalid} invalid; nothing published (--check)\n")
    return 1 if invalid else 0


async def _iterate(items: Iterable[Item]) -> AsyncIterator[Item | Bad]:
    for item in items:
        yield item


def _one_line(e: BaseException | None) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _quiet_libraries(settings: Settings) -> None:
    """aio-pika, aiormq and the telemetry sender log connection trouble; the command says it once,
    in its own words."""
    if settings.log_level == "DEBUG":
        logging.basicConfig(level=logging.DEBUG)
        return
    for name in ("aio_pika", "aiormq", "sluice.telemetry"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False


def main(args: PublishArgs, settings: Settings) -> int:
    _quiet_libraries(settings)
    # the demo tasks every worker loads, and the --tasks modules: a payload they would refuse is refused here
    registry = known_registry(args.tasks)
    rules = Rules(settings.max_message_bytes, settings.default_queue, registry, args.strict)
    defaults: dict[str, Any] = {
        "task": args.task,
        "queue": args.queue,
        "idempotency_key": args.idempotency_key,
        "trace_id": args.trace_id,
        "delay": args.delay,
        "track": args.track or None,
        "unique_key": args.unique_key,
        "unique_for": args.unique_for,
        "unique_release": args.unique_release,
    }
    template = Template(defaults, args.envelopes)
    if args.stdin:
        stdin = sys.stdin.buffer

        def entries() -> AsyncIterator[Item | Bad]:
            return inputs.stdin_entries(stdin, template, rules, args.count)

        total: int | None = None
        known = registry.get(args.task) if registry is not None and args.task else None
        fixed = args.queue or (known.queue if known is not None else settings.default_queue)
        if args.check:
            return _loop.run(check(args, entries(), 1))
    else:  # one payload: checked before connecting, a bad one refuses the run
        if args.payload_file is not None:
            where = f"--payload-file {args.payload_file}"
            text = inputs.read_file(args.payload_file)
        else:
            where, text = "--payload", args.payload or "{}"
        item = inputs.build_item(template.spec(inputs.parse_object(text, where), where), rules, where)
        if args.check:
            return _loop.run(check(args, _iterate([item]), args.count))

        def entries() -> AsyncIterator[Item | Bad]:
            return _iterate(inputs.expand((item,), args.count))

        total, fixed = args.count, item.msg.queue
    fixed_queue = None if args.stdin and args.envelopes else fixed  # envelope lines name their own queues
    # A bulk publish keeps about publish_window tasks, futures and frames alive, so the cyclic collector
    # runs often, and each of its full passes would also walk every object the imports left (typer,
    # pydantic, aio-pika: ~10^5 of them). Frozen, they are skipped: 5-10 % of the CPU of a 50,000-line
    # publish (docs/benchmarks.md). Nothing frozen is garbage: it is the loaded code and its constants.
    gc.freeze()
    return _loop.run(run(args, settings, entries, total, fixed_queue, registry))
