"""The in-memory backend's answers to the scripts of ``_lua_throttle.py`` (and the freeze check that the
GCRA and window scripts make): the sliding log, freezes, the adaptive rate and GCRA at it, on their
reference models.

Split out of :mod:`._memory` (same conventions: the script's keys and arguments, its reply, its TTLs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from . import _lua
from ._reference import GCRAModel, SlidingLogModel
from ._reference_adaptive import AIMDModel, AIMDParams, FreezeModel
from ._scripts import Arg
from .memory import MemoryBackend, keep_ms

__all__ = ["frozen_reply", "gcra_after_freeze", "handlers"]

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


def gcra_after_freeze(
    backend: MemoryBackend, key: str, freeze: str | None, model: GCRAModel, now: int, cost: int, peek: bool
) -> str:
    """GCRA's decision on ``model`` (kept at ``key`` when it takes units), resuming at the rate after the
    freeze ``freeze`` ended (its hash still there): the TAT at least its end + tau - T, as the scripts."""
    ended = backend.model(freeze) if freeze is not None else None
    decide = model
    if isinstance(ended, FreezeModel) and ended.until:
        tat = now if model.tat is None or model.tat < now else model.tat
        hold = ended.until + model.tau_us - model.emission_us
        decide = GCRAModel(model.emission_us, model.tau_us, hold if tat < hold else tat)
    reply = decide.decide(now, cost, peek)
    if reply[0] == 1 and not peek and decide.tat is not None:
        model.tat = decide.tat
        backend.keep(key, model, math.ceil((model.tat - now) / 1000) + 1000)
    return " ".join(map(str, reply))


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

    def sliding_settle(keys: Sequence[str], args: Sequence[Arg]) -> str:
        now = _now(backend, args)
        a, b, c = _text(args[1]).split()
        model = backend.model(keys[0])
        if not isinstance(model, SlidingLogModel):
            model = SlidingLogModel(int(c), 1)
        newest = max(model.stamps[-1], now) if model.stamps else now
        found, s = model.settle(now, int(a), int(b))
        backend.keep(keys[0], model, keep_ms(max(s, newest) + int(c) - now))
        return f"{found} {s}"

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
            if len(args) > 2:
                model.described = _text(args[2])
            backend.keep(keys[0], model, keep_ms(model.ttl_us(now, params)))
        return f"{rate:.17g} {cut} {at}"

    def gcra_aimd(keys: Sequence[str], args: Sequence[Arg]) -> str:
        now = _now(backend, args)
        frozen = frozen_reply(backend, [keys[0], *keys[2:]], now, 2)
        if frozen is not None:
            return frozen
        a, b, c, peek, d, e, f = _text(args[1]).split()
        period, burst, top = float(a), float(b), float(d)
        aimd = backend.model(keys[1])
        rate = top
        if isinstance(aimd, AIMDModel):  # read as the AIMD script's 'r' mode reads it (floor, factor unused)
            rate = aimd.decide(now, AIMDParams(top, 1.0, 0.5, float(e), int(f), 0), signal=False)[0]
        emission, tau = period / rate, period * burst / top
        model = backend.model(keys[0])
        if not isinstance(model, GCRAModel):
            model = GCRAModel(emission, tau)
        model.emission_us, model.tau_us = emission, tau
        return gcra_after_freeze(
            backend, keys[0], keys[2] if len(keys) > 2 else None, model, now, int(c), peek == "1"
        )

    def aimd_show(keys: Sequence[str], args: Sequence[Arg]) -> list[str]:
        now = _now(backend, args)
        models = [backend.model(k) for k in keys]
        return [m.show(now) if isinstance(m, AIMDModel) else "" for m in models]

    return {
        _lua.AIMD_SHOW.sha: aimd_show,
        _lua.GCRA_AIMD.sha: gcra_aimd,
        _lua.SLIDING_LOG.sha: sliding_log,
        _lua.SLIDING_SETTLE.sha: sliding_settle,
        _lua.FREEZE.sha: freeze,
        _lua.FREEZE_READ.sha: freeze_read,
        _lua.AIMD.sha: aimd,
    }
