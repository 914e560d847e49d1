"""The exact sliding window: never more than ``limit`` units in any window of ``period``, fleet-wide.

A sliding *log*: one sorted-set member per unit admitted, scored by its admission time on Redis' clock
(µs). A decision (one script) drops the members older than the window, counts the rest, and admits
``cost`` units only if the count stays within ``limit``. An admitted unit counts while its stamp ``s``
satisfies ``s >= t - period``, ``t`` the decision's time: a closed window, so *any* interval of length
``period``, ends included, holds at most ``limit`` admissions (proof: the last one admitted in such an
interval saw all the others in its own window).

Stamps never go back, even if the server clock does: a decision's time is never below the newest stamp
in the log, and the log keeps what is within a period of that stamp while the key lives (a period and a
second after the last admission; a clock stepping back further than that after such a pause cannot
crowd a real window, the old admissions being that far in the past). So the guarantee holds on the stamps the script answers
(``Decision.server_time_us``). ``retry_after`` is exact: when enough of the oldest entries leave the
window for ``cost`` units to fit (``stamp + period + 1 µs - now``), if nothing else is admitted meanwhile.

What it costs, for ``limit`` N per period: memory O(N) per name, one member of ~18 bytes (its stamp and
an index) per unit admitted in the last period, which Redis keeps in a skiplist and a hash once over
128 members. At 10,000/min that is 10,000 members: ``MEMORY USAGE`` measured 1,291,232 bytes per name
(129 bytes a member, Redis 7.0; tests/resilience/test_sliding.py prints it), against 88 bytes for a GCRA
key. Time: O(log N + cost) per decision, plus the members it drops (each dropped once: O(log N)
amortised). Use it where an upstream counts a sliding window and refuses the excess; GCRA elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend
from ._limiter import Decision, LimiterOptions, Rate, RateLimiterBase, _seconds
from ._reference import SlidingLogModel
from ._scripts import Script
from .errors import BackendUnavailable

__all__ = ["SlidingLogLimiter"]


class SlidingLogLimiter(RateLimiterBase):
    """Never more than ``rate.limit`` units in any window of ``rate.period`` seconds, across every process.

    The same interface as :class:`~sluice.resilience.GCRALimiter` (``try_acquire``, ``acquire``, ``peek``,
    ``reset``, ``cost``, ``freeze=``, ``coalesce=``, the outage policies); ``burst`` is ``rate.limit``
    (all of it may be taken at once). A ``cost`` above the limit never fits (``retry_after`` is ``inf``).

    ``margin`` (seconds, default 0) widens the window: an admission counts for ``period + margin``. The
    window is exact on Redis' clock at admission, but an upstream counts *arrivals*, and the time from
    admission to arrival varies (connection set-up, scheduling, the network): two admissions a period
    apart can arrive a little less than a period apart. A margin of that variation (a few ms on one
    machine, more across a network) keeps every window the upstream sees within its limit too
    (tests/throttle/test_upstream.py measures both). A call that may outlast the margin is
    settled (:meth:`settle`) when it ends: its unit then counts a period from its end, and the window holds
    however late its request arrived.
    """

    kind = "sliding"

    def __init__(
        self, redis: Backend, rate: Rate, *, margin: float = 0.0, **options: Unpack[LimiterOptions]
    ) -> None:
        if not 0 <= margin < math.inf:  # NaN too
            raise ConfigError(f"bad margin {margin}: a finite number of seconds >= 0")
        self.rate = rate
        self.burst = rate.limit
        self.margin = margin
        self._window_us = round((rate.period + margin) * 1_000_000)
        self._margin_us = round(margin * 1_000_000)
        super().__init__(redis, **options)

    async def settle(self, name: str, stamp_us: int) -> bool:
        """The unit of ``name`` admitted at ``stamp_us`` (its :attr:`Decision.server_time_us`) ended its
        call now: it counts a full ``period`` from now on (stamped ``now - margin``, never earlier than
        it was), so the window holds its request wherever in the call it reached the upstream. For a call
        that outlasts ``margin``; a shorter one is covered by the margin and needs no settling.

        One round trip (coalesced like the decisions). True when the unit was still in the log (False:
        it had left the window, and one unit was counted afresh, which only makes the window stricter).
        Redis away: False, and the unit keeps its admission stamp (the margin still covers a late
        request of up to ``margin`` seconds); never raises for that.
        """
        if stamp_us <= 0 or not name:
            return False  # decided by the outage policy: no unit in Redis to settle
        call = (
            _lua.SLIDING_SETTLE,
            [self._key_head + name + "}"],
            ["", f"{stamp_us} {self._margin_us} {self._window_us}"],
        )
        try:
            if self._coalescer is not None:
                reply = await self._coalescer.call(call)
            else:
                reply = await self._runner.run(*call)
        except BackendUnavailable:
            return False
        return int(reply.split()[0]) == 1

    @property
    def _script(self) -> Script:
        return _lua.SLIDING_LOG

    def _params(self, cost: int, peek: bool) -> str:
        return f"{self._window_us} {self.rate.limit} {cost} {int(peek)}"

    def _parse(self, reply: Sequence[int]) -> Decision:
        return Decision(bool(reply[0]), _seconds(reply[1]), reply[2], reply[3], False, len(reply) > 4)

    def _local_model(self) -> SlidingLogModel:
        share = self._outage.local_share
        return SlidingLogModel(self._window_us, max(1, math.floor(self.rate.limit * share)))
