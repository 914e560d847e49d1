"""The body of ``sluice publish``: read and check every input, then publish with a progress bar."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sluice.publisher import Publisher, PublishOutcome
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice_producer import _loop, inputs
from sluice_producer.bulk import count_published, publish_all
from sluice_producer.inputs import Item, Rules
from sluice_producer.models import TaskIn

SHOW_FAILURES = 5  # failures listed one per line on stderr; the rest are counted


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


def collect(args: PublishArgs, settings: Settings, stdin: TextIO) -> list[Item]:
    """Every task to publish, each checked; raises on the first bad input (nothing is published then)."""
    registry = Registry.from_modules(args.tasks) if args.tasks else None
    rules = Rules(settings.max_message_bytes, settings.default_queue, registry, args.strict)
    defaults: dict[str, Any] = {
        "task": args.task,
        "queue": args.queue,
        "idempotency_key": args.idempotency_key,
        "trace_id": args.trace_id,
        "delay": args.delay,
    }

    def spec(payload: dict[str, Any], where: str) -> TaskIn:
        if args.envelopes:
            return inputs.envelope(payload, defaults, where)
        return inputs.envelope({"payload": payload}, defaults, where)

    def sources() -> Iterator[tuple[dict[str, Any], str]]:
        if args.stdin:
            for n, obj in inputs.read_ndjson(stdin):
                yield obj, f"stdin line {n}"
        elif args.payload_file is not None:
            where = f"--payload-file {args.payload_file}"
            yield inputs.parse_object(inputs.read_file(args.payload_file), where), where
        else:
            yield inputs.parse_object(args.payload or "{}", "--payload"), "--payload"

    items = [Item(inputs.build_message(spec(obj, where), rules, where), where) for obj, where in sources()]
    return list(inputs.expand(items, args.count))


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
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

            self._bar = Progress(
                TextColumn("publishing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
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

    def advance(self, _: PublishOutcome) -> None:
        self._done += 1
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._start, 1e-9)
            self._bar.update(self._task, advance=1, rate=f"{self._done / elapsed:,.0f}/s")


def show_progress(choice: bool | None, total: int, stderr: TextIO) -> bool:
    """Auto: a bar only for bulk work on an interactive stderr (never in pipes or CI logs)."""
    if choice is not None:
        return choice and total > 1
    return total > 1 and stderr.isatty()


async def run(args: PublishArgs, settings: Settings, items: list[Item]) -> int:
    """Publish the checked items; print ids on stdout and a summary on stderr. Returns the exit status."""
    messages = [item.msg for item in items]
    start = time.monotonic()
    telemetry = telemetry_for(settings, "producer")  # one final snapshot on exit: the published counts
    async with (
        SnapshotPublisher(settings, telemetry),
        Publisher(settings, name="sluice-publish") as publisher,
    ):
        with _Progress(len(messages), show_progress(args.progress, len(messages), sys.stderr)) as bar:
            outcomes = await publish_all(publisher, messages, bar.advance)
        count_published(telemetry, messages, outcomes)
    elapsed = time.monotonic() - start
    failed = [o for o in outcomes if o.error is not None]
    confirmed = [o for o in outcomes if o.error is None]
    rate = len(confirmed) / elapsed if elapsed > 0 else 0.0
    if args.as_json:
        doc = {
            "published": len(confirmed),
            "failed": len(failed),
            "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(rate, 1),
            "ids": [o.task_id for o in confirmed],
            "failures": [
                {"index": o.index, "where": items[o.index].where, "id": o.task_id, "error": str(o.error)}
                for o in failed
            ],
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.writelines(f"{o.task_id}\n" for o in confirmed)
    sys.stdout.flush()
    for o in failed[:SHOW_FAILURES]:
        sys.stderr.write(
            f"sluice: error: task #{o.index + 1} ({items[o.index].where}) id {o.task_id} "
            f"not confirmed: {_one_line(o.error)}\n"
        )
    if len(failed) > SHOW_FAILURES:
        sys.stderr.write(f"sluice: error: ... and {len(failed) - SHOW_FAILURES} more not confirmed\n")
    sys.stderr.write(f"published {len(confirmed)}, failed {len(failed)} in {elapsed:.2f}s ({rate:,.0f}/s)\n")
    return 1 if failed else 0


def _one_line(e: BaseException | None) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _quiet_libraries(settings: Settings) -> None:
    """aio-pika and aiormq log connection trouble; the command says it once, in its own words."""
    if settings.log_level == "DEBUG":
        logging.basicConfig(level=logging.DEBUG)
        return
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False


def main(args: PublishArgs, settings: Settings) -> int:
    _quiet_libraries(settings)
    items = collect(args, settings, sys.stdin)
    if not items:
        sys.stderr.write("published 0, failed 0: no tasks in the input\n")
        return 0
    return _loop.run(run(args, settings, items))
