"""The in-memory backend's answers to the scripts of ``_lua_throttle.py`` (and the freeze check that the
GCRA and window scripts make): the sliding log, freezes and the adaptive rate, on their reference models.

Split out of :mod:`._memory` (same conventions: the script's keys and arguments, its reply, its TTLs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import _lua
from ._reference import SlidingLogModel
from ._reference_adaptive import AIMDModel, AIMDParams, FreezeModel
from ._scripts import Arg
from .memory import MemoryBackend, keep_ms

__all__ = ["frozen_reply", "handlers"]

Handler = Callable[[Sequence[str], Sequence[Arg]], Any]


def _text(arg: Arg) -> str:
    return arg.decode() if isinstance(arg, bytes) else str(arg)


def _now(backend: MemoryBackend, args: Sequence[Arg]) -> int:
    override = _text(args[0])
    return int(override) if override else backend.now_us()


def frozen_reply(backend: MemoryBackend, keys: Sequence[str], now: int, zeros: int) -> str | None:
    """The rate-limit scripts' "frozen" reply when ``keys[1]`` names a freeze that holds a later time
    (``zeros``: the fields between retry_after and now: 1 for the window and the log, 2 for GCRA)."""
    if len(keys) < 2:
        return None
    model = backend.model(keys[1])
    if not isinstance(model, FreezeModel) or model.until <= now:
        return None
    return " ".join(["0", str(model.until - now), *["0"] * zeros, str(now), "1"])


def handlers(backend: MemoryBackend) -> dict[str, Handler]:
    """The handlers by script SHA, for :class:`~._memory.MemoryRunner`."""

    def sliding_log(keys: Sequence[str], args: Sequence[Arg]) -> str:
        now = _now(backend, args)
        frozen = frozen_reply(backend, keys, now, 1)
        if frozen is not None:
            return frozen
        a, b, c, peek = _text(args[1]).split()
        model = backend.model(keys[0])  # changed in place: the pruning keeps the key's TTL, as on Redis
        if not isinstance(model, SlidingLogModel):
            model = SlidingLogModel(int(a), int(b))
        model.period_us, model.limit = int(a), int(b)
        reply = model.decide(now, int(c), peek == "1")
        if reply[0] == 1 and peek == "0" and int(c) > 0:
            backend.keep(keys[0], model, keep_ms(reply[3] + model.period_us - now))
        elif not model.stamps:
            backend.delete(keys[0])  # an empty sorted set is no key
        return " ".join(map(str, reply))

    def freeze(keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        now = _now(backend, args)
        model = backend.model(keys[0])  # changed in place when kept: its TTL stays, as HSET keeps it
        if not isinstance(model, FreezeModel):
            model = FreezeModel()
        reply = model.freeze(now, int(float(_text(args[1]))), _text(args[2]))
        if reply[0] == 1:
            backend.keep(keys[0], model, keep_ms(model.until - now))
        return list(reply)

    def freeze_read(keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        now = _now(backend, args)
        model = backend.model(keys[0])
        return list((model if isinstance(model, FreezeModel) else FreezeModel()).read(now))

    def aimd(keys: Sequence[str], args: Sequence[Arg]) -> str:
        now = _now(backend, args)
        mode, a, b, c, d, e, f = _text(args[1]).split()
        params = AIMDParams(float(a), float(b), float(c), float(d), int(e), int(f))
        model = backend.model(keys[0])
        if not isinstance(model, AIMDModel):
            model = AIMDModel()
        rate, cut, at = model.decide(now, params, signal=mode == "s")
        if mode == "s":
            backend.keep(keys[0], model, keep_ms(model.ttl_us(now, params)))
        return f"{rate:.17g} {cut} {at}"

    return {
        _lua.SLIDING_LOG.sha: sliding_log,
        _lua.FREEZE.sha: freeze,
        _lua.FREEZE_READ.sha: freeze_read,
        _lua.AIMD.sha: aimd,
    }
