"""The body of ``sluice publish``: check the input, publish it as a stream, report as it goes.

stdout: the id of every confirmed task, in input order, written as it is confirmed (flushed at least
every :data:`._publish_report.FLUSH_EVERY` seconds); with ``--json`` one document whose ``ids`` list is written id by id
and whose counts close it. stderr: broker outage notices, the first ``SHOW_FAILURES`` failures as
they happen, then a summary. Memory holds the tasks in flight and a bounded list of failures, never
the input.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.errors import BrokerUnavailable
from sluice.publisher import Publisher, creatable_queues
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import SnapshotPublisher, telemetry_for
from sluice_producer import _loop, inputs
from sluice_producer._publish_report import (
    SHOW_FAILURES,
    ProgressBar,
    Reporter,
    Stdout,
    failure_doc,
    flush_every,
    show_progress,
)
from sluice_producer.bulk import Failure, publish_stream
from sluice_producer.handled import HandleOps
from sluice_producer.inputs import Bad, Item, Rules, Template
from sluice_producer.known import known_registry


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
    out = Stdout(sys.stdout)
    async with (
        SnapshotPublisher(settings, telemetry),
        Publisher(
            settings,
            name="sluice-publish",
            creatable=creatable,
            fair=registry.fair_routes() if registry else None,  # fair tasks to their tenants' sub-queues
        ) as publisher,
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
        with ProgressBar(total, show_progress(args.progress, total, sys.stderr)) as bar:
            sink = Reporter(out, args.as_json, bar, args.give_up_after)
            flusher = asyncio.create_task(flush_every(out))
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
