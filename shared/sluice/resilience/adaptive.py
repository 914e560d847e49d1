"""An adaptive rate (AIMD), shared in Redis: throttle signals cut it, quiet intervals raise it back.

For a limit whose real ceiling is the upstream's, unknown or changing: every worker reads the same
effective rate (:meth:`AdaptiveRate.current`) and limits with it; a throttle signal from any worker
(an HTTP 429: :meth:`AdaptiveRate.throttled`) cuts it multiplicatively for the whole fleet, and each
interval without a signal raises it additively, back up to the declared rate (TCP's AIMD):

* a signal: ``rate = max(floor, rate * factor)`` (``factor`` 0.5), unless the last cut is less than
  ``cooldown`` seconds old (the 429s of requests already in flight at the old rate cut once, not once
  each); every signal restarts the quiet interval;
* each full ``interval`` seconds without a signal: ``rate += step`` (``step``: a tenth of the declared
  rate by default), never above the declared rate.

One hash per name, ``<prefix>:aimd:{<name>}``, one script per signal and per read (the read changes
nothing), on Redis' clock; the hash expires once the rate would be back at the declared one, and a
name with no hash runs at the declared rate. Rates are in units per the declared rate's period, as
floats; :attr:`AdaptiveState.limit` is the whole number of units a limiter can take (at least 1).

:class:`AdaptiveGCRALimiter` is GCRA at that rate: its script reads the hash in the decision itself
(the same round trip, no local copy to go stale), so every worker admits at the effective rate the
moment any worker's signal cut it. Its burst scales with the rate (``burst * rate / declared``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, runner_for
from ._coalesce import CoalescingClient
from ._limiter import LimiterOptions, Rate
from ._reference_adaptive import AIMDParams
from ._scripts import Arg, Call, Script
from .gcra import GCRALimiter
from .keys import KeySpace
from .memory import MemoryBackend

__all__ = ["AdaptiveGCRALimiter", "AdaptiveRate", "AdaptiveReading", "AdaptiveState", "adaptive_rates"]


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    """The effective rate of one name: ``rate`` units per ``period`` (a float), the ``declared`` rate,
    whether this call ``cut`` it, and Redis' clock at the answer (µs)."""

    rate: float
    declared: Rate
    cut: bool
    server_time_us: int

    @property
    def limit(self) -> Rate:
        """The effective rate as a limiter's :class:`Rate`: whole units per period, at least 1."""
        return Rate(max(1, math.floor(self.rate)), self.declared.period)

    @property
    def per_second(self) -> float:
        return self.rate / self.declared.period

    @property
    def reduced(self) -> bool:
        """Below the declared rate."""
        return self.rate < self.declared.limit


class AdaptiveRate(CoalescingClient):
    """The fleet's adaptive rate for names declared at ``rate`` (see the module docstring)."""

    kind = "aimd"

    def __init__(
        self,
        redis: Backend,
        rate: Rate,
        *,
        factor: float = 0.5,
        step: float | None = None,
        interval: float = 5.0,
        floor: float | None = None,
        cooldown: float = 1.0,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
    ) -> None:
        step = rate.limit / 10 if step is None else step
        floor = min(float(rate.limit), max(1.0, rate.limit / 100)) if floor is None else floor
        if not 0 < factor < 1:
            raise ConfigError(f"bad factor {factor}: an adaptive rate is cut by a factor in (0, 1)")
        for what, value in (("step", step), ("interval", interval), ("floor", floor)):
            if not value > 0 or not math.isfinite(value):
                raise ConfigError(f"bad {what} {value}: must be a finite number > 0")
        if not cooldown >= 0 or not math.isfinite(cooldown):
            raise ConfigError(f"bad cooldown {cooldown}: must be a finite number >= 0")
        if floor > rate.limit:
            raise ConfigError(f"bad floor {floor}: above the declared rate {rate.limit}")
        self.rate = rate
        self.params = AIMDParams(
            float(rate.limit),
            float(floor),
            float(factor),
            float(step),
            round(interval * 1e6),
            round(cooldown * 1e6),
        )
        self._keys = keys or KeySpace()
        self._runner = runner_for(redis, timeout=timeout)
        self._coalescer = None
        self._argv = {mode: self.params.argv(mode) for mode in ("s", "r")}
        p = self.params
        self._described = f"{p.declared!r} {p.step!r} {p.interval_us} {rate.period_us}"

    def key(self, name: str) -> str:
        return self._keys.key(self.kind, name)

    async def throttled(self, name: str) -> AdaptiveState:
        """A throttle signal for ``name``: cut its rate (unless within ``cooldown`` of the last cut)."""
        return await self._run(name, "s", "")

    async def current(self, name: str) -> AdaptiveState:
        """``name``'s effective rate now (changes nothing). One round trip."""
        return await self._run(name, "r", "")

    async def reset(self, name: str) -> None:
        """Back to the declared rate."""
        await self._runner.command("DEL", self.key(name))

    async def _run(self, name: str, mode: str, now: int | str) -> AdaptiveState:
        args: list[Arg] = [now, self._argv[mode], self._described]
        reply = await self._runner.run(_lua.AIMD, [self.key(name)], args)
        rate, cut, at = (reply.decode() if isinstance(reply, bytes) else str(reply)).split()
        return AdaptiveState(float(rate), self.rate, cut == "1", int(at))

    async def _call(self, name: str, signal: bool, now_us: int) -> AdaptiveState:
        """The script with the server clock overridden by ``now_us``: for tests only."""
        return await self._run(name, "s" if signal else "r", now_us)


@dataclass(frozen=True, slots=True)
class AdaptiveReading:
    """A name whose adaptive rate a signal moved and that is not back at its declared rate yet:
    ``rate`` and ``declared`` units per ``period`` seconds."""

    name: str
    rate: float
    declared: float
    period: float

    @property
    def per_second(self) -> float:
        return self.rate / self.period


async def adaptive_rates(
    redis: Backend, *, keys: KeySpace | None = None, max_keys: int = 1000
) -> list[AdaptiveReading]:
    """Every adaptive rate below its declared one under this key prefix, by name (at most ``max_keys``),
    each by the parameters its last signal kept: one ``SCAN`` and one script on Redis. For ``sluice limits
    ls`` and the metrics, which know no declared rates."""
    space = keys or KeySpace()
    head = space.key(AdaptiveRate.kind, "-")[:-3]  # "<prefix>:aimd:"
    names: list[str] = []
    if isinstance(redis, MemoryBackend):
        names = [k[len(head) + 1 : -1] for k in redis.keys(head)][:max_keys]
    else:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in head) + "{*}"
        async for raw in redis.scan_iter(match=pattern, count=500):
            names.append((raw.decode() if isinstance(raw, bytes) else str(raw))[len(head) + 1 : -1])
            if len(names) >= max_keys:
                break
    names = sorted(set(names))
    if not names:
        return []
    runner = runner_for(redis, timeout=5.0)
    calls = [(_lua.AIMD_SHOW, [space.key(AdaptiveRate.kind, n)], [""]) for n in names]
    replies = await runner.run_many(calls) if len(calls) > 1 else [await runner.run(*calls[0])]
    out: list[AdaptiveReading] = []
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        text = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if text:
            rate, declared, period_us = text.split()
            if float(rate) < float(declared):
                out.append(AdaptiveReading(name, float(rate), float(declared), int(period_us) / 1e6))
    return out


class AdaptiveGCRALimiter(GCRALimiter):
    """A :class:`GCRALimiter` at ``aimd``'s effective rate for each name (see the module docstring).

    Same keys as a GCRA limiter of the declared rate (a name switched to adaptive keeps its bucket),
    plus the name's AIMD hash, read in the script: ``aimd.throttled(name)`` slows every worker's next
    decision. ``rate`` and ``burst`` are the declared ones; ``aimd`` must use this limiter's key space.
    """

    def __init__(
        self,
        redis: Backend,
        aimd: AdaptiveRate,
        *,
        burst: int | None = None,
        **options: Unpack[LimiterOptions],
    ) -> None:
        super().__init__(redis, aimd.rate, burst=burst, **options)
        self.aimd = aimd
        self._aimd_head = aimd.key("-")[:-2]
        p = aimd.params
        self._tail = f"{p.declared!r} {p.step!r} {p.interval_us}"

    @property
    def _script(self) -> Script:
        return _lua.GCRA_AIMD

    def _params(self, cost: int, peek: bool) -> str:
        return f"{self.rate.period_us} {self.burst} {cost} {int(peek)} {self._tail}"

    def _make_call(self, name: str, cost: int, peek: bool, now: int | str, freeze: str | None = None) -> Call:
        params = self._argv.get((cost, peek))
        if params is None:
            params = self._argv[(cost, peek)] = self._params(cost, peek)
        keys = [self._key_head + name + "}", self._aimd_head + name + "}"]
        if freeze is not None:
            keys.append(self._freeze_head + freeze + "}")
        return self._script, keys, [now, params]
