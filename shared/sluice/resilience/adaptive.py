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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, runner_for
from ._coalesce import CoalescingClient
from ._limiter import Rate
from ._reference_adaptive import AIMDParams
from .keys import KeySpace

__all__ = ["AdaptiveRate", "AdaptiveState"]


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
        reply = await self._runner.run(_lua.AIMD, [self.key(name)], [now, self._argv[mode]])
        rate, cut, at = (reply.decode() if isinstance(reply, bytes) else str(reply)).split()
        return AdaptiveState(float(rate), self.rate, cut == "1", int(at))

    async def _call(self, name: str, signal: bool, now_us: int) -> AdaptiveState:
        """The script with the server clock overridden by ``now_us``: for tests only."""
        return await self._run(name, "s" if signal else "r", now_us)
