"""The script calls of the state writes: one ``WRITE`` call per transition (see :mod:`.state` for the
ordering rule the script applies)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sluice.resilience._scripts import Arg, Call
from sluice.resilience._wire import Packed

from . import _lua
from ._keys import HandleKeys
from ._lua import HISTORY_CAP
from .state import RANK, TERMINAL, State

__all__ = ["HISTORY_CAP", "LIVE_TTL", "encode_fields", "ms", "write_call"]

#: Seconds a record of a task that has not ended is kept after its last write (a safety net: a task that
#: never ends, e.g. its queue was deleted, does not stay in Redis forever).
LIVE_TTL = 7 * 86400.0


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds (at least 1: Redis refuses a zero TTL)."""
    return max(1, round(seconds * 1000))


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# each state's part of a write's head: its name, rank and the time it stamps
_HEAD: dict[State, str] = {
    s: f"{s.value} %d %d {RANK[s]} %d "
    + ("finished" if RANK[s] == 4 else "started" if s is State.RUNNING else "-")
    for s in RANK
}


def encode_fields(fields: Mapping[str, str]) -> str:
    """``fields`` as :func:`write_call` sends them (to encode once what many writes send)."""
    return _JSON.encode(fields)


def write_call(
    keys: HandleKeys,
    task_id: str,
    state: State,
    *,
    generation: int,
    attempt: int,
    ttl: float,
    detail: str | None = None,
    fields: Mapping[str, str] | str | None = None,
    info: Mapping[str, str | None] | str | None = None,
    result: bytes | None = None,
    ran_ms: int | None = None,
) -> Call:
    """The ``WRITE`` call recording ``state``: ``fields`` are set ("" deletes one; a ``str`` is taken as
    their JSON, encoded once by a caller that sends the same fields often), ``info`` fields (or their JSON) only
    where absent (the task's name, queue, publish time: the same for every write), ``result`` (JSON bytes;
    ``b""`` deletes it) if given. A terminal state stamps ``finished`` and is published on the ended
    channel; ``running`` stamps ``started``. ``ran_ms``: the write also stands for the attempt's
    ``running`` write, which started that many ms before it (``started`` and a history entry)."""
    if isinstance(info, str):  # its JSON already
        present = info
    else:
        present = _JSON.encode({} if info is None else {k: v for k, v in info.items() if v is not None})
    head = _HEAD[state] % (generation, attempt, ms(ttl))
    if ran_ms is not None:
        head = f"{head} {max(0, ran_ms)}"
    channel = keys.ended_channel if state in TERMINAL else ""
    detail = detail or ""
    fields_json = fields if isinstance(fields, str) else _JSON.encode(fields or {})
    args: list[Arg] = ["", head, task_id, channel, detail, fields_json, present]
    # the RESP of the arguments and keys in one format each (a write is the tracker's hot call)
    h, i, c, d, f, p = (x.encode() for x in (head, task_id, channel, detail, fields_json, present))
    resp = _ARGS % (len(h), h, len(i), i, len(c), c, len(d), d, len(f), f, len(p), p)
    if result is not None:
        args.append(result)
        resp += b"$%d\r\n%b\r\n" % (len(result), result)
    record = keys.record(task_id)
    k = record[0].encode()
    return (_lua.WRITE, Packed(record, _KEYS % (len(k), k, len(k) + 2, k)), Packed(args, resp))


# the bulk strings of a write's arguments: the clock override (always empty here), then six more
_ARGS = b"$0\r\n\r\n" + b"$%d\r\n%b\r\n" * 6
# of its keys: the record and its history (the record's name and ":h")
_KEYS = b"$%d\r\n%b\r\n$%d\r\n%b:h\r\n"
