"""Turning what ``sluice publish`` (and the HTTP API) is given into checked
:class:`~sluice.protocol.TaskMessage` objects.

Each input is checked: JSON syntax (with the line number of NDJSON), the object shape, the size cap,
and with a task registry the payload against the task's model. A single payload (``--payload``,
``--payload-file``) that fails refuses the run before anything is published. NDJSON on stdin is a
stream: :func:`stdin_entries` reads it in chunks (in a thread: the event loop never waits on stdin)
and yields each line as an :class:`Item` or, when it fails a check, a :class:`Bad` naming its line, so
the caller publishes the good lines and reports the bad ones without holding the input in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from sluice.errors import ConfigError, NotJSON, ProtocolError, SluiceError, UnknownTask
from sluice.protocol import TaskMessage, encode_body, new_task_id, now_ms
from sluice.tasks import Registry, Task
from sluice_producer.handled import handled
from sluice_producer.models import TaskIn

__all__ = [
    "Bad",
    "Item",
    "PayloadInvalid",
    "Rules",
    "Template",
    "build_item",
    "build_message",
    "envelope",
    "expand",
    "parse_object",
    "read_file",
    "read_lines",
    "read_ndjson",
    "stdin_entries",
    "validation_summary",
]

CHUNK = 1 << 16  # bytes read from stdin at a time


class PayloadInvalid(ConfigError):
    """A payload that does not fit its task's model; ``errors`` are pydantic's."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Item:
    """A checked task, where it came from (for error messages) and, once checked, its encoded body
    (the size check encodes it: the publish reuses it instead of encoding it again)."""

    msg: TaskMessage
    where: str
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Bad:
    """An input that failed its check: not published; ``error`` names ``where``."""

    where: str
    error: SluiceError


@dataclass(frozen=True, slots=True)
class Rules:
    """What applies to every task of one publish run (or one HTTP request)."""

    max_bytes: int
    default_queue: str = "default"
    registry: Registry | None = None
    strict: bool = False


def validation_summary(e: ValidationError) -> str:
    errs = e.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "payload"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def parse_object(text: str, where: str) -> dict[str, Any]:
    """One JSON object, or :class:`NotJSON` naming ``where``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        raise NotJSON(f"{where}: not valid JSON ({e.msg} at {at})") from None
    if not isinstance(value, dict):
        raise NotJSON(f"{where}: expected a JSON object, got {_json_type(value)}")
    return value


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(v), type(v).__name__
    )


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NotJSON(f"--payload-file {path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"--payload-file {path}: cannot read it: {e.strerror or e}") from None


def read_ndjson(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; the first bad line raises :class:`NotJSON`."""
    for n, line in enumerate(lines, start=1):
        if line.strip():
            yield n, parse_object(line.rstrip("\r\n"), f"stdin line {n}")


def build_message(spec: TaskIn, rules: Rules, where: str) -> TaskMessage:
    """The task message for ``spec``: queue resolved, payload checked against the cap and the model."""
    return build_item(spec, rules, where).msg


def build_item(spec: TaskIn, rules: Rules, where: str) -> Item:
    """:func:`build_message`'s message as an :class:`Item`, with its encoded body."""
    known = _known(spec.task, rules, where)
    return _item(spec, _queue(spec, rules, known), known, rules.max_bytes, where, spec.payload)


def _known(task: str, rules: Rules, where: str) -> Task | None:
    known = rules.registry.get(task) if rules.registry is not None else None
    if known is None and rules.strict and rules.registry is not None:
        raise UnknownTask(
            f"{where}: unknown task {task!r} (strict mode: the producer knows only its --tasks)"
        )
    return known


def _queue(spec: TaskIn, rules: Rules, known: Task | None) -> str:
    return spec.queue or (known.queue if known is not None else rules.default_queue)


def _item(
    spec: TaskIn, queue: str, known: Task | None, max_bytes: int, where: str, payload: dict[str, Any]
) -> Item:
    """One checked task: ``payload`` against ``known``'s model and the size cap; the rest from ``spec``."""
    if known is not None:
        try:
            known.parse(payload)
        except ValidationError as e:
            raise PayloadInvalid(
                f"{where}: payload does not fit task {spec.task!r}: {validation_summary(e)}",
                [dict(err) for err in e.errors(include_url=False)],
            ) from None
    try:
        body = encode_body(payload, max_bytes)
    except ProtocolError as e:
        raise type(e)(f"{where}: {e}") from None
    msg = TaskMessage(
        task=spec.task,
        payload=payload,
        queue=queue,
        idempotency_key=spec.idempotency_key,
        trace_id=spec.trace_id,
        eta_ms=None if not spec.delay else now_ms() + round(float(spec.delay) * 1000),
    )
    if spec.track or spec.unique_key is not None:  # a plain task is never wrapped (the bulk path)
        msg = handled(
            msg,
            track=spec.track,
            unique_key=spec.unique_key,
            unique_for=spec.unique_for,
            unique_release=spec.unique_release or "end",
        )
    return Item(msg, where, body)


def envelope(obj: dict[str, Any], defaults: dict[str, Any], where: str) -> TaskIn:
    """An NDJSON envelope line as a :class:`TaskIn`, command-line values filling what it leaves out."""
    merged = {k: v for k, v in defaults.items() if v is not None} | obj
    try:
        return TaskIn.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(f"{where}: bad envelope: {validation_summary(e)}") from None


def expand(items: Iterable[Item], count: int) -> Iterator[Item]:
    """Each item ``count`` times, every copy with its own task id."""
    for item in items:
        yield item
        for _ in range(count - 1):
            yield Item(dataclasses.replace(item.msg, id=new_task_id()), item.where, item.body)


class Template:
    """The command-line values every input of one run shares, checked once.

    ``spec(obj, where)`` is the :class:`TaskIn` of one input object: with ``envelopes`` the object is
    an envelope (validated, command-line values filling what it leaves out); otherwise it is the
    payload, and the rest (checked once here) is the same for every line.
    """

    def __init__(self, defaults: dict[str, Any], envelopes: bool) -> None:
        self._defaults = defaults
        self._envelopes = envelopes
        self._base: TaskIn | None = None
        if not envelopes:
            try:
                self._base = TaskIn.model_validate({k: v for k, v in defaults.items() if v is not None})
            except ValidationError as e:
                raise ConfigError(f"bad option value: {validation_summary(e)}") from None

    def spec(self, obj: dict[str, Any], where: str) -> TaskIn:
        if self._base is None:
            return envelope(obj, self._defaults, where)
        return self._base.model_copy(update={"payload": obj})

    def builder(self, rules: Rules) -> Callable[[dict[str, Any], str], Item]:
        """``build(obj, where)``: the checked :class:`Item` of one input object. Without envelopes every
        line shares the task, its queue and its model, resolved here once rather than once per line
        (the bulk path: no model copy per line either)."""
        base = self._base
        if base is None:
            return lambda obj, where: build_item(self.spec(obj, where), rules, where)
        try:
            known = _known(base.task, rules, "stdin")
        except UnknownTask:  # strict mode and not a known task: every line is refused, naming its line
            return lambda obj, where: build_item(base, rules, where)
        queue, max_bytes = _queue(base, rules, known), rules.max_bytes
        return lambda obj, where: _item(base, queue, known, max_bytes, where, obj)


async def read_lines(stream: BinaryIO, max_line: int) -> AsyncIterator[list[tuple[int, bytes | None]]]:
    """The lines of ``stream``, one list per chunk read: (line number, line without its newline), and
    ``None`` for a line longer than ``max_line`` bytes (not kept: memory stays bounded whatever the input).

    Each chunk is read in a thread with ``read1`` (what is there, up to :data:`CHUNK` bytes), so a
    slow writer delays only its own lines and never blocks the event loop. A list per chunk, not a
    line per step: one generator step for hundreds of lines on the bulk path.
    """
    read = getattr(stream, "read1", stream.read)
    n = 0
    tail = bytearray()
    too_long = False
    while chunk := await _read(read):
        lines: list[tuple[int, bytes | None]] = []
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            n += 1
            if too_long:
                too_long = False
                lines.append((n, None))
            elif tail:
                tail += chunk[start:nl]
                lines.append((n, bytes(tail) if len(tail) <= max_line else None))
                tail.clear()
            else:
                lines.append((n, chunk[start:nl] if nl - start <= max_line else None))
            start = nl + 1
        if not too_long:
            tail += chunk[start:]
            if len(tail) > max_line:
                too_long = True
                tail.clear()
        if lines:
            yield lines
    if too_long or tail:
        yield [(n + 1, None if too_long else bytes(tail))]


async def _read(read: Callable[[int], bytes]) -> bytes:
    try:
        return await asyncio.to_thread(read, CHUNK)
    except OSError as e:
        raise ConfigError(f"stdin: cannot read it: {e.strerror or e}") from None


async def stdin_entries(
    stream: BinaryIO, template: Template, rules: Rules, count: int
) -> AsyncIterator[Item | Bad]:
    """Every NDJSON line of ``stream`` as checked items (``count`` copies each), or :class:`Bad`.

    Blank lines are skipped. A line is at most four times the size cap (JSON escapes can make a payload's
    text longer than its encoded body); a longer one is :class:`Bad` without being held in memory.
    """
    max_line = 4 * rules.max_bytes + 4096
    build = template.builder(rules)
    async for lines in read_lines(stream, max_line):
        for n, raw in lines:
            where = f"stdin line {n}"
            if raw is None:
                yield Bad(where, NotJSON(f"{where}: longer than {max_line} bytes"))
                continue
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                item = build(parse_object(text, where), where)
            except UnicodeDecodeError:
                yield Bad(where, NotJSON(f"{where}: not UTF-8 text"))
                continue
            except SluiceError as e:
                yield Bad(where, e)
                continue
            if count == 1:
                yield item
            else:
                for copy in expand((item,), count):
                    yield copy
