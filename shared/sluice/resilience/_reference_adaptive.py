"""Reference models of the freeze and the adaptive (AIMD) rate scripts (``_lua_throttle.py``).

As in :mod:`._reference`: the same arithmetic as the scripts, in the same order (doubles), checked
against them reply for reply, and run by the in-memory backend. Times are microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AIMDModel", "AIMDParams", "FreezeModel"]


@dataclass(slots=True)
class FreezeModel:
    """FREEZE / FREEZE_READ: the end of a freeze (``until`` µs, 0: none), its reason, freezes counted."""

    until: int = 0
    reason: str = ""
    count: int = 0

    def freeze(self, now: int, delta_us: int, reason: str) -> tuple[int, int, int, str, int]:
        """extended (0/1), until (0: none), count, reason of the end in force, now. The later end is kept."""
        u = now + delta_us
        cur, count = (self.until, self.count) if self.until > now else (0, 0)
        if u <= now or (cur and cur >= u):
            if cur:
                self.count = count + 1
                return 0, cur, count + 1, self.reason, now
            return 0, 0, 0, "", now
        self.until, self.reason, self.count = u, reason, count + 1
        return 1, u, count + 1, reason, now

    def read(self, now: int) -> tuple[int, int, str, int]:
        """until (0: not frozen), count, reason, now."""
        if self.until <= now:
            return 0, 0, "", now
        return self.until, self.count, self.reason, now


@dataclass(frozen=True, slots=True)
class AIMDParams:
    """The script's parameters: declared rate, floor, factor (x0.5), step per quiet interval, µs."""

    declared: float
    floor: float
    factor: float
    step: float
    interval_us: int
    cooldown_us: int

    def argv(self, mode: str) -> str:
        return (
            f"{mode} {self.declared!r} {self.floor!r} {self.factor!r} {self.step!r} "
            f"{self.interval_us} {self.cooldown_us}"
        )


@dataclass(slots=True)
class AIMDModel:
    """AIMD: ``rate`` now, ``quiet_since`` (start of the quiet run), ``cut_at`` (last cut; None: never).

    ``rate is None`` is the missing key: the declared rate. ``described``: the parameters the last
    signal kept for readers that know none ("declared step interval_µs period_µs", AIMD_SHOW).
    """

    rate: float | None = None
    quiet_since: int = 0
    cut_at: int | None = None
    described: str = ""

    def show(self, now: int) -> str:
        """AIMD_SHOW's answer for this hash: "rate declared period_µs", "" without parameters."""
        if self.rate is None or not self.described:
            return ""
        a, b, c, d = self.described.split()
        r, top, step, interval = self.rate, float(a), float(b), int(c)
        if now > self.quiet_since:
            k = math.floor((now - self.quiet_since) / interval)
            if k > 0:
                r = r + k * step
        r = min(r, top)
        return f"{r:.17g} {a} {d}"

    def decide(self, now: int, p: AIMDParams, signal: bool) -> tuple[float, int, int]:
        """rate, cut (0/1), now; with ``signal`` False the state is only read (not changed)."""
        r: float
        if self.rate is None:
            r, t, cut_at = p.declared, now, None
        else:
            r, t, cut_at = self.rate, self.quiet_since, self.cut_at
        if now > t:
            k = math.floor((now - t) / p.interval_us)
            if k > 0:
                r = r + k * p.step
                t = t + k * p.interval_us
        r = min(r, p.declared)
        if not signal:
            return r, 0, now
        cut = 0
        if cut_at is None or now - cut_at >= p.cooldown_us:
            r = max(r * p.factor, p.floor)
            cut_at, cut = now, 1
        self.rate, self.quiet_since, self.cut_at = r, now, cut_at
        return r, cut, now

    def ttl_us(self, now: int, p: AIMDParams) -> float:
        """How long the script's key lives after a signal (before ``keep``'s rounding): until the rate is
        back at the declared one and the cooldown is over."""
        assert self.rate is not None and self.cut_at is not None
        back = self.quiet_since + math.ceil((p.declared - self.rate) / p.step) * p.interval_us
        return max(back, self.cut_at + p.cooldown_us) - now
