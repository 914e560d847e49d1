"""GCRA rate limiter: token-bucket semantics (rate, burst, cost per call), one key per name, O(1).

GCRA bounds the *average*, not every window: in any interval of length ``t`` it admits up to
``burst + rate * t`` units. With the default ``burst = rate.limit`` a "50/s" limit can admit about 100
units in one second (50 saved up after a pause, then 50 more as the second goes on). It is not "at most
N in any window of the period" for any burst: with ``burst = 1`` it is still ``N + 1`` in a closed window.
For an exact "never more than N in any window" (an upstream that counts a sliding window) use
:class:`~sluice.resilience.SlidingLogLimiter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend
from ._limiter import Decision, LimiterOptions, Rate, RateLimiterBase, _seconds
from ._reference import GCRAModel
from ._scripts import Script

__all__ = ["GCRALimiter"]


class GCRALimiter(RateLimiterBase):
    """At most ``burst`` units at once and ``rate`` units per period on average, across every process.

    In any interval of length ``t`` it admits at most ``burst + rate * t`` units, and traffic that
    keeps to that bound is never refused. ``burst`` defaults to ``rate.limit``: so one period may see up
    to about twice ``rate.limit`` (see the module docstring, and ``SlidingLogLimiter`` for a strict window).

    ``coalesce=True`` sends the decisions asked for while others are in flight together, in one
    pipeline: more decisions per second than one-by-one round trips allow (a lone call goes at once).
    """

    kind = "gcra"

    def __init__(
        self, redis: Backend, rate: Rate, *, burst: int | None = None, **options: Unpack[LimiterOptions]
    ) -> None:
        self.rate = rate
        self.burst = rate.limit if burst is None else burst
        if self.burst < 1:
            raise ConfigError("burst must be at least 1")
        self._emission = rate.period_us / rate.limit
        self._tau = self._emission * self.burst
        super().__init__(redis, **options)

    @property
    def _script(self) -> Script:
        return _lua.GCRA

    def _params(self, cost: int, peek: bool) -> str:
        return f"{self._emission!r} {self._tau!r} {cost} {int(peek)}"

    def _parse(self, reply: Sequence[int]) -> Decision:
        return Decision(bool(reply[0]), _seconds(reply[1]), reply[2], reply[4], False, len(reply) > 5)

    def _local_model(self) -> GCRAModel:
        share = self._outage.local_share
        local = self.rate.scaled(share)
        emission = local.period_us / local.limit
        return GCRAModel(emission, emission * max(1, math.floor(self.burst * share)))
