"""Sliding-window counter: "at most N per window" quotas, O(1) memory per name.

The estimate is this window's count plus the previous window's count weighted by the part of it
still inside the sliding window. It is an approximation (it assumes the previous window's calls were
evenly spread): each fixed window admits at most ``limit``, and any window of the same length up to
``2 * limit``. For an exact "never more than N in any window" use
:class:`~sluice.resilience.SlidingLogLimiter` (GCRA is no such thing either, whatever its burst: it
admits up to ``burst + rate * t`` in a window of length ``t``, about ``2 * N`` per period with the
default burst).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Unpack

from . import _lua
from ._backend import Backend
from ._limiter import Decision, LimiterOptions, Rate, RateLimiterBase, _seconds
from ._reference import SlidingWindowModel
from ._scripts import Script

__all__ = ["SlidingWindowLimiter"]


class SlidingWindowLimiter(RateLimiterBase):
    """About ``rate.limit`` units per sliding window of ``rate.period`` seconds (an estimate: up to twice
    that in some windows), shared by every process."""

    kind = "window"

    def __init__(self, redis: Backend, rate: Rate, **options: Unpack[LimiterOptions]) -> None:
        self.rate = rate
        super().__init__(redis, **options)

    @property
    def _script(self) -> Script:
        return _lua.WINDOW

    def _params(self, cost: int, peek: bool) -> str:
        return f"{self.rate.period_us} {self.rate.limit} {cost} {int(peek)}"

    def _parse(self, reply: Sequence[int]) -> Decision:
        return Decision(bool(reply[0]), _seconds(reply[1]), reply[2], reply[3], False, len(reply) > 4)

    def _local_model(self) -> SlidingWindowModel:
        share = self._outage.local_share
        return SlidingWindowModel(self.rate.period_us, max(1, math.floor(self.rate.limit * share)))
