"""Fleet-wide retry budget (after Finagle's RetryBudget and Envoy's retry budgets).

Every first attempt deposits a call; a retry is allowed while the retries of the last ``window``
seconds stay within ``ratio`` of the calls in that window plus ``min_per_second`` per second.
During an outage of the called service every process's retries draw from the same budget, so the
fleet sends at most ``ratio`` more load, not ``max_attempts`` times the load (a retry storm).

The defaults are defined here once, for this primitive and for the budget a task declares
(:class:`sluice.policy.RetryBudgetPolicy`, which the worker turns into one of these):
``ratio`` 0.2 and ``window`` 10 s as in Finagle's RetryBudget, but ``min_per_second`` 1, not Finagle's 10.
Finagle's floor is per client process and serves retries a caller waits for; this budget is one for the
whole fleet, and a task fleet's retries go to the delay tiers (nobody waits on them, and a refused one is
a dead letter to replay after the outage). A floor of 10/s fleet-wide would let a task running at 5/s
retry at 11/s during an outage, more than twice its load; at 1/s it is 2/s. The floor only has to keep
a quiet task's occasional retry going (10 in any window of 10 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from ._reference import GCRAModel
from .errors import BackendUnavailable, RetryBudgetExhausted
from .keys import KeySpace
from .outage import FailClosed, OutageMonitor, OutagePolicy, OutageStats

__all__ = ["DEFAULT_MIN_PER_SECOND", "DEFAULT_RATIO", "DEFAULT_WINDOW", "RetryBudget", "check_budget"]

DEFAULT_RATIO = 0.2  # retries may be 20 % of the first attempts in the window...
DEFAULT_MIN_PER_SECOND = 1.0  # ...plus this many per second, fleet-wide (see the module's docstring)
DEFAULT_WINDOW = 10  # seconds


def check_budget(ratio: float, min_per_second: float, window: int) -> None:
    """Raise :class:`~sluice.errors.ConfigError` unless ``ratio >= 0``, ``min_per_second >= 0`` and
    ``window >= 1`` (the one check of :class:`RetryBudget` and :class:`sluice.policy.RetryBudgetPolicy`)."""
    if not ratio >= 0 or not min_per_second >= 0 or window < 1:
        raise ConfigError(
            f"bad retry budget (ratio {ratio}, min_per_second {min_per_second}, window {window}s): "
            "need ratio >= 0, min_per_second >= 0 and window >= 1 s"
        )


class RetryBudget:
    """Retries allowed: ``ratio`` x calls in the last ``window`` seconds + ``min_per_second`` x ``window``.

    What a task declares is :class:`sluice.policy.RetryBudgetPolicy` (the same fields and defaults, plus
    the budget's ``name``); the worker builds this primitive from it.
    """

    kind = "budget"

    def __init__(
        self,
        redis: Backend,
        name: str,
        *,
        ratio: float = DEFAULT_RATIO,
        min_per_second: float = DEFAULT_MIN_PER_SECOND,
        window: int = DEFAULT_WINDOW,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
        outage: OutagePolicy | None = None,
        clock: Callable[[], float] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        check_budget(ratio, min_per_second, window)
        self.name = name
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.key = (keys or KeySpace()).key(self.kind, name)
        self._runner = runner_for(redis, timeout=timeout)
        clock = clock or clock_of(redis).monotonic
        self._clock = clock
        self._outage = OutageMonitor(
            f"RetryBudget({name})", outage or FailClosed(), clock=clock, logger=logger
        )
        self._local: GCRAModel | None = None

    @property
    def outage_stats(self) -> OutageStats:
        return self._outage.stats

    async def record_call(self, n: int = 1) -> None:
        """Deposit ``n`` first attempts. Never raises for Redis trouble (the deposit is skipped)."""
        if self._outage.should_try():
            try:
                await self._call("call", n)
            except BackendUnavailable as exc:
                self._outage.failed(exc)
            else:
                self._outage.succeeded()

    async def try_retry(self) -> bool:
        """Withdraw one retry if the budget has one."""
        if not self._outage.should_try():
            return self._fallback()
        try:
            reply = await self._call("retry", 0)
        except BackendUnavailable as exc:
            self._outage.failed(exc)
            return self._fallback()
        self._outage.succeeded()
        return bool(reply[0] == 1)

    async def spend(self) -> None:
        """Withdraw one retry or raise :class:`RetryBudgetExhausted` (for retry loops of your own)."""
        if not await self.try_retry():
            raise RetryBudgetExhausted(f"retry budget {self.name} is spent", retry_after=1.0)

    async def _call(self, kind: str, n: int, now_us: int | None = None) -> list[int]:
        """The raw script reply; ``now_us`` overrides the server clock, for tests only."""
        args = [
            "" if now_us is None else now_us,
            kind,
            n,
            self.window,
            repr(self.ratio),
            repr(self.min_per_second),
        ]
        reply: list[int] = await self._runner.run(_lua.BUDGET, [self.key], args)
        return reply

    def _fallback(self) -> bool:
        self._outage.fell_back()
        if isinstance(self._outage.policy, FailClosed):
            return False
        if self._local is None:
            per_second = max(self.min_per_second * self._outage.local_share, 1e-3)
            emission = 1_000_000 / per_second
            self._local = GCRAModel(emission, emission)
        return bool(self._local.decide(round(self._clock() * 1_000_000))[0])
