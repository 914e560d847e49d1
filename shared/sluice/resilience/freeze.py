"""Fleet-wide freezes: "stop admitting this name until then", after an upstream said so (HTTP 429).

A freeze is one small hash per name, ``<prefix>:freeze:{<name>}`` (``u``: its end on Redis' clock in µs,
``r``: a reason, ``c``: the freezes it took), expiring a second after it ends. :meth:`Freezes.freeze` keeps the
later of two ends, so concurrent 429s from many workers make one freeze. The rate limiters read it in
their own script (``try_acquire(name, freeze=name)``): a task that already takes a rate-limit decision
pays no extra round trip to honour a freeze. :meth:`Freezes.get` reads one for tasks that take none.

Durations are client-side seconds turned into server time by the script (``now + seconds`` on Redis'
clock): an HTTP-date from the upstream is first turned into seconds from now on the local wall clock,
so the client's clock offset only matters for that one conversion. A freeze is capped at
``max_freeze`` (1 h by default).

Redis unreachable: ``freeze``, ``thaw``, ``get`` and ``frozen`` raise
:class:`~sluice.resilience.BackendUnavailable` (a caller deferring a throttled task defers it anyway);
the limiters' own outage policy decides their answers, and a fail-open limiter keeps honouring the
freezes it saw until they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from ._coalesce import CoalescingClient
from ._scripts import Arg
from .clock import Clock
from .keys import KeySpace
from .memory import MemoryBackend

__all__ = ["MAX_FREEZE", "Freeze", "Freezes"]

MAX_FREEZE = 3600.0  # seconds: the longest freeze (an upstream asking for more is capped)
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Freeze:
    """A freeze in force: ``name``, its end ``until_us`` (Redis' clock), ``remaining`` seconds at the
    read, the ``reason`` of the freeze that set its end, and ``count``: the freezes it took."""

    name: str
    until_us: int
    remaining: float
    reason: str
    count: int

    @property
    def until(self) -> datetime:
        """The end as an aware UTC datetime (Redis' wall clock)."""
        return datetime.fromtimestamp(self.until_us / 1_000_000, UTC)


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class Freezes(CoalescingClient):
    """Freeze, thaw and list names, fleet-wide (see the module docstring)."""

    kind = "freeze"

    def __init__(
        self,
        redis: Backend,
        *,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
        max_freeze: float = MAX_FREEZE,
        clock: Clock | None = None,
    ) -> None:
        if not max_freeze > 0 or not math.isfinite(max_freeze):
            raise ConfigError(f"bad max_freeze {max_freeze}: must be a finite number of seconds > 0")
        self._redis = redis
        self._keys = keys or KeySpace()
        self._runner = runner_for(redis, timeout=timeout)
        self._coalescer = None
        self._clock = clock or clock_of(redis)
        self.max_freeze = max_freeze

    def key(self, name: str) -> str:
        return self._keys.key(self.kind, name)

    def seconds_until(self, until: float | datetime) -> float:
        """``until`` as seconds from now, within ``[0, max_freeze]``: a number is already seconds from now;
        a datetime (naive: UTC) is read against the local wall clock."""
        if isinstance(until, datetime):
            moment = until if until.tzinfo is not None else until.replace(tzinfo=UTC)
            seconds = moment.timestamp() - self._clock.time()
        elif isinstance(until, bool) or not isinstance(until, int | float) or math.isnan(until):
            raise ConfigError(f"bad freeze end {until!r}: seconds from now or a datetime")
        else:
            seconds = float(until)
        return min(max(seconds, 0.0), self.max_freeze)

    async def freeze(self, name: str, until: float | datetime, *, reason: str = "") -> Freeze | None:
        """Freeze ``name`` for ``until`` seconds from now (or until that datetime), or keep its current
        freeze if that one ends later. The freeze in force after the call, ``None`` if there is none (an
        ``until`` already past and no freeze). One round trip."""
        seconds = self.seconds_until(until)
        delta_us = math.ceil(seconds * 1_000_000)
        args: list[Arg] = ["", delta_us, reason[:_MAX_REASON]]
        _, end, count, kept, now = await self._runner.run(_lua.FREEZE, [self.key(name)], args)
        if not end:
            return None
        return Freeze(name, int(end), (int(end) - int(now)) / 1_000_000, _text(kept), int(count))

    async def thaw(self, name: str) -> bool:
        """End ``name``'s freeze now; False if it was not frozen."""
        return bool(await self._runner.command("DEL", self.key(name)))

    async def get(self, name: str) -> Freeze | None:
        """``name``'s freeze in force, or ``None``. One round trip."""
        (found,) = await self._read([name])
        return found

    async def frozen(self, *, max_keys: int = 1000) -> list[Freeze]:
        """Every freeze in force under this key prefix, by name (at most ``max_keys``): one ``SCAN`` and
        one pipeline on Redis. For ``sluice limits ls`` and the metrics."""
        head = self.key("-")[:-3]  # "<prefix>:freeze:"
        names: list[str] = []
        if isinstance(self._redis, MemoryBackend):
            names = [k[len(head) + 1 : -1] for k in self._redis.keys(head)][:max_keys]
        else:
            pattern = "".join("\\" + c if c in "*?[]\\" else c for c in head) + "{*}"
            async for raw in self._redis.scan_iter(match=pattern, count=500):
                names.append(_text(raw)[len(head) + 1 : -1])
                if len(names) >= max_keys:
                    break
        found = await self._read(sorted(set(names)))
        return [f for f in found if f is not None]

    async def _read(self, names: list[str]) -> list[Freeze | None]:
        if not names:
            return []
        calls = [(_lua.FREEZE_READ, [self.key(n)], [""]) for n in names]
        if len(calls) == 1:
            replies = [await self._runner.run(*calls[0])]
        else:
            replies = await self._runner.run_many(calls)
        out: list[Freeze | None] = []
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            until, count, reason, now = int(reply[0]), int(reply[1]), _text(reply[2]), int(reply[3])
            out.append(Freeze(name, until, (until - now) / 1_000_000, reason, count) if until else None)
        return out
