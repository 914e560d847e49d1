"""From a record's hash and history list (as Redis returns them) to a :class:`TaskStatus`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .state import ErrorInfo, State, Transition
from .status import TaskStatus

__all__ = ["decode_status", "text"]


def text(value: Any) -> str:
    """A reply as text (the client may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _state(value: str | None) -> State:
    try:
        return State(value) if value else State.UNKNOWN
    except ValueError:
        return State.UNKNOWN


def _transition(raw: Any) -> Transition | None:
    try:
        state, at, attempt, detail = json.loads(text(raw))
        return Transition(_state(state), int(at), int(attempt), detail or None)
    except (ValueError, TypeError):
        return None


def decode_status(task_id: str, raw: Mapping[Any, Any], history: Sequence[Any]) -> TaskStatus:
    """The status of ``task_id`` from ``HGETALL`` and ``LRANGE 0 -1`` (an empty hash: ``unknown``)."""
    if not raw:
        return TaskStatus(id=task_id, state=State.UNKNOWN)
    f = {text(k): text(v) for k, v in raw.items()}
    result: Any = None
    if "result" in f:
        try:
            result = json.loads(f["result"])
        except ValueError:
            result = None
    etype = f.get("etype")
    return TaskStatus(
        id=task_id,
        state=_state(f.get("state")),
        task=f.get("task"),
        queue=f.get("queue"),
        attempt=_int(f, "attempt") or 0,
        published_ms=_int(f, "published"),
        started_ms=_int(f, "started"),
        finished_ms=_int(f, "finished"),
        worker=f.get("worker"),
        reason=f.get("reason"),
        next_run_ms=_int(f, "next"),
        error=None if etype is None else ErrorInfo(etype, f.get("emsg", "")),
        result=result,
        result_error=f.get("result_error"),
        cancel_requested=f.get("cancel") == "1",
        generation=_int(f, "gen") or 0,
        history=tuple(t for t in map(_transition, history) if t is not None),
    )
