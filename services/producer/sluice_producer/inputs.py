"""Turning what ``sluice publish`` is given into checked :class:`~sluice.protocol.TaskMessage` objects.

Everything is checked before anything is published: JSON syntax (with the line number of NDJSON),
the object shape, the size cap, and with a task registry the payload against the task's model. One
bad input refuses the whole run, so nothing is half-published.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sluice.errors import ConfigError, NotJSON, ProtocolError, UnknownTask
from sluice.protocol import TaskMessage, encode_body, new_task_id, now_ms
from sluice.tasks import Registry
from sluice_producer.models import TaskIn

__all__ = [
    "Item",
    "PayloadInvalid",
    "Rules",
    "build_message",
    "envelope",
    "expand",
    "parse_object",
    "read_file",
    "read_ndjson",
]


class PayloadInvalid(ConfigError):
    """A payload that does not fit its task's model; ``errors`` are pydantic's."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Item:
    """A checked task, and where it came from (for error messages)."""

    msg: TaskMessage
    where: str


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
    known = rules.registry.get(spec.task) if rules.registry is not None else None
    if known is None and rules.strict and rules.registry is not None:
        raise UnknownTask(
            f"{where}: unknown task {spec.task!r} (strict mode: the producer knows only its --tasks)"
        )
    if known is not None:
        try:
            known.parse(spec.payload)
        except ValidationError as e:
            raise PayloadInvalid(
                f"{where}: payload does not fit task {spec.task!r}: {validation_summary(e)}",
                [dict(err) for err in e.errors(include_url=False)],
            ) from None
    try:
        encode_body(spec.payload, rules.max_bytes)
    except ProtocolError as e:
        raise type(e)(f"{where}: {e}") from None
    queue = spec.queue or (known.queue if known is not None else rules.default_queue)
    return TaskMessage(
        task=spec.task,
        payload=spec.payload,
        queue=queue,
        idempotency_key=spec.idempotency_key,
        trace_id=spec.trace_id,
        eta_ms=None if not spec.delay else now_ms() + round(float(spec.delay) * 1000),
    )


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
            yield Item(dataclasses.replace(item.msg, id=new_task_id()), item.where)
