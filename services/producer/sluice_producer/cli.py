"""Commands of the producer service: ``sluice publish`` and ``sluice producer``.

Only typer is imported here; the broker and HTTP stacks are imported inside the commands.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

__all__ = ["register"]

_TASK_NAME = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")


def publish(
    task: str | None = typer.Argument(
        None,
        help="task name (every input line's task; with --envelopes, the default task)",
        show_default=False,
    ),
    source: str | None = typer.Argument(
        None,
        metavar="[-]",
        help="'-': read NDJSON from stdin, one payload object per line",
        show_default=False,
    ),
    payload: str | None = typer.Option(
        None, "--payload", "-p", help="the payload, a JSON object (default {})", show_default=False
    ),
    payload_file: Path | None = typer.Option(
        None,
        "--payload-file",
        "-f",
        help="read the payload (one JSON object) from this file",
        show_default=False,
    ),
    envelopes: bool = typer.Option(
        False,
        "--envelopes",
        help='each input object is an envelope {"task", "payload", "queue", "idempotency_key", "trace_id", '
        '"delay", "track", "unique_key", "unique_for", "unique_release"}',
    ),
    count: int = typer.Option(1, "--count", "-n", help="publish every payload N times (ids differ)"),
    queue: str | None = typer.Option(
        None, "--queue", "-q", help="sluice queue (default: the task's queue, else SLUICE_DEFAULT_QUEUE)"
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="header x-sluice-idempotency-key of every task", show_default=False
    ),
    trace_id: str | None = typer.Option(
        None, "--trace-id", help="header x-sluice-trace-id of every task", show_default=False
    ),
    delay: str | None = typer.Option(
        None,
        "--delay",
        metavar="D",
        help="run no sooner than D from now: 30s, 5m, 1500ms, 2h (delay tiers, +-0.5 s)",
        show_default=False,
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="print one JSON document (ids written as confirmed, then the counts) instead of ids",
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="progress bar on stderr (default: when stderr is a terminal)"
    ),
    tasks: list[str] | None = typer.Option(
        None,
        "--tasks",
        metavar="MODULE",
        help="module of task definitions: validate payloads, route to the task's queue",
    ),
    strict: bool = typer.Option(False, "--strict", help="with --tasks: refuse task names not defined there"),
    give_up_after: float = typer.Option(
        60.0,
        "--give-up-after",
        metavar="SECONDS",
        help="ride through a broker outage this long (re-publishing what was not confirmed); 0: stop at "
        "the first broker failure",
    ),
    check: bool = typer.Option(
        False, "--check", help="only check the input (every line), publish nothing; exit 1 if any is bad"
    ),
    create_queue: bool = typer.Option(
        False,
        "--create-queue",
        help="may create a queue that does not exist (default: only the default queue, SLUICE_QUEUES and "
        "the --tasks queues)",
    ),
    track: bool = typer.Option(
        False, "--track", help="track every task: `sluice task status ID` / `wait ID` follow it (Redis)"
    ),
    unique_key: str | None = typer.Option(
        None,
        "--unique-key",
        metavar="K",
        help="publish only if no task with key K is queued, deferred or running; else print that "
        "task's id (exit 0). Implies --track",
        show_default=False,
    ),
    unique_for: str | None = typer.Option(
        None,
        "--unique-for",
        metavar="D",
        help="with --unique-key: hold the key at most D (30s, 10m, 1h; default 1d)",
        show_default=False,
    ),
    unique_release: str | None = typer.Option(
        None,
        "--unique-release",
        metavar="WHEN",
        help="with --unique-key: free the key when the task ends (end, the default), only on success "
        "(success), or only after --unique-for (ttl)",
        show_default=False,
    ),
) -> None:
    """Publish tasks to RabbitMQ, each confirmed by the broker; print their ids on stdout."""
    if count < 1:
        raise typer.BadParameter(f"--count {count}: must be at least 1")
    if not give_up_after >= 0:  # also refuses nan
        raise typer.BadParameter(f"--give-up-after {give_up_after}: must be 0 or more seconds")
    if task == "-" and source is None:
        task, source = None, "-"
    if source is not None and source != "-":
        raise typer.BadParameter(f"unexpected argument {source!r}; only '-' (stdin) may follow TASK")
    given = [
        name for name, v in (("--payload", payload), ("--payload-file", payload_file), ("-", source)) if v
    ]
    if len(given) > 1:
        raise typer.BadParameter(f"{' and '.join(given)} cannot be used together: give one payload source")
    if task is None and not envelopes:
        raise typer.BadParameter("missing TASK (or use --envelopes with task names in the input)")
    if task is not None and not _TASK_NAME.match(task):
        raise typer.BadParameter(f"bad task name {task!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
    if strict and not tasks:
        raise typer.BadParameter("--strict needs --tasks")
    unique_seconds = _unique_options(unique_key, unique_for, unique_release)

    from sluice.settings import Settings
    from sluice.topology import check_queue_name
    from sluice_producer import _publish_cmd

    if queue is not None:
        check_queue_name(queue)
    if delay is not None:
        from sluice.errors import ConfigError
        from sluice.policy import parse_duration
        from sluice_producer.models import MAX_DELAY_S

        try:
            if parse_duration(delay) > MAX_DELAY_S:
                raise typer.BadParameter(f"--delay {delay}: over the maximum of 30 days")
        except ConfigError as e:
            raise typer.BadParameter(f"--delay: {e}") from None
    args = _publish_cmd.PublishArgs(
        task=task,
        payload=payload,
        payload_file=payload_file,
        stdin=source == "-",
        envelopes=envelopes,
        count=count,
        queue=queue,
        idempotency_key=idempotency_key,
        trace_id=trace_id,
        delay=delay,
        as_json=as_json,
        progress=progress,
        tasks=tasks or [],
        strict=strict,
        give_up_after=give_up_after,
        check=check,
        create_queue=create_queue,
        track=track,
        unique_key=unique_key,
        unique_for=unique_seconds,
        unique_release=unique_release,
    )
    code = _publish_cmd.main(args, Settings())
    if code:
        raise typer.Exit(code)


_RELEASES = ("success", "end", "ttl")
_MAX_UNIQUE_FOR = 30 * 86400.0


def _unique_options(key: str | None, hold: str | None, release: str | None) -> float | None:
    """The --unique-* options checked; --unique-for in seconds."""
    if key is None:
        for name, v in (("--unique-for", hold), ("--unique-release", release)):
            if v is not None:
                raise typer.BadParameter(f"{name} needs --unique-key")
        return None
    if not 0 < len(key) <= 512:
        raise typer.BadParameter("--unique-key: 1-512 characters")
    if release is not None and release not in _RELEASES:
        raise typer.BadParameter(f"--unique-release {release!r}: use one of {', '.join(_RELEASES)}")
    if hold is None:
        return None
    from sluice.errors import ConfigError
    from sluice.policy import parse_duration

    try:
        seconds = parse_duration(hold)
    except ConfigError as e:
        raise typer.BadParameter(f"--unique-for: {e}") from None
    if not 0 < seconds <= _MAX_UNIQUE_FOR:
        raise typer.BadParameter(f"--unique-for {hold}: more than 0, at most 30 days")
    return seconds


def producer(
    host: str | None = typer.Option(None, "--host", help="bind address (default SLUICE_PRODUCER_HOST)"),
    port: int | None = typer.Option(
        None, "--port", help="port (default SLUICE_PRODUCER_PORT)", show_default=False
    ),
    tasks: list[str] | None = typer.Option(
        None,
        "--tasks",
        metavar="MODULE",
        help="module of task definitions: validate payloads, route to the task's queue",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="with --tasks: answer 422 to task names not defined there"
    ),
    max_batch: int = typer.Option(10_000, "--max-batch", help="most tasks in one batch request"),
    max_wait: float = typer.Option(
        60.0, "--max-wait", metavar="SECONDS", help="longest long poll of GET /v1/tasks/{id}?wait=S"
    ),
) -> None:
    """Run the producer HTTP service (POST /v1/tasks, /v1/tasks/batch; GET and DELETE /v1/tasks/{id};
    GET /healthz, /readyz).

    Bearer-token auth (SLUICE_API_TOKENS, SLUICE_API_TOKEN_FILE) is on when tokens are configured or
    the bind address is not loopback; without a token it then refuses to start (exit 1).
    """
    if strict and not tasks:
        raise typer.BadParameter("--strict needs --tasks")
    if port is not None and not 1 <= port <= 65535:
        raise typer.BadParameter(f"--port {port}: must be 1-65535")
    if max_batch < 1:
        raise typer.BadParameter(f"--max-batch {max_batch}: must be at least 1")
    if not 0 < max_wait <= 3600:
        raise typer.BadParameter(f"--max-wait {max_wait}: more than 0, at most 3600 seconds")
    from sluice.settings import Settings
    from sluice_producer import _auth
    from sluice_producer.known import known_registry
    from sluice_producer.server import serve

    settings = Settings()
    bind = host or settings.producer_host
    auth = _auth.resolve(settings, bind)  # refuses a non-loopback address without a token (exit 1)
    registry = known_registry(tasks or [])  # the demo tasks, and those of --tasks
    serve(
        settings,
        registry,
        host=bind,
        port=port or settings.producer_port,
        strict=strict,
        max_batch=max_batch,
        auth=auth,
        max_wait=max_wait,
    )


def register(app: typer.Typer) -> None:
    """Add this service's commands to the ``sluice`` app."""
    app.command("publish")(publish)
    app.command("producer")(producer)
