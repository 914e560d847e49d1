"""What the rate limiters share: decisions, waiting, batching and the outage policy.

A subclass supplies the script and its arguments, the reply parser and the local model used when
failing open; everything else (one round trip per decision, or one pipeline per batch; the
``acquire`` wait; outage handling) lives here once.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, TypedDict, Unpack

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from ._coalesce import Coalescer, CoalescingClient
from ._scripts import Call, Script
from .errors import BackendUnavailable, RateLimited
from .keys import KeySpace
from .outage import FailClosed, OutageMonitor, OutagePolicy, OutageStats

__all__ = ["Acquisition", "Decision", "LimiterOptions", "Rate", "RateLimiterBase"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_MAX_LOCAL_NAMES = 10_000
_FREEZE_KIND = "freeze"  # the key kind of sluice.resilience.freeze.Freezes, whose keys the scripts read


class LimiterOptions(TypedDict, total=False):
    """Options every rate limiter takes (all keyword-only, all optional).

    ``keys``: the key prefix (default ``KeySpace()``); ``timeout``: seconds any Redis call may take
    (default 0.5); ``outage``: the outage policy (default ``FailClosed()``); ``coalesce``: batch
    concurrent decisions into one pipeline (default off); ``clock`` (monotonic seconds) and ``sleep``:
    local time only, decisions use the backend's clock (default: the in-memory backend's clock, else
    the real one); ``logger``.
    """

    keys: KeySpace | None
    timeout: float
    outage: OutagePolicy | None
    coalesce: bool
    clock: Clock
    sleep: Sleep
    logger: logging.Logger | None


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` units per ``period`` seconds: the rate a limiter enforces.

    A task declares its limit as :class:`sluice.policy.RateLimit` (the same ``limit`` and ``period``, plus
    ``burst`` and a per-tenant ``key``, which are the limiter's and the worker's business); its
    :attr:`~sluice.policy.RateLimit.rate` is this rate. Both check the pair with :meth:`Rate.check`.
    """

    limit: int
    period: float = 1.0

    def __post_init__(self) -> None:
        Rate.check(self.limit, self.period, "rate")

    @staticmethod
    def check(limit: int, period: float, what: str) -> None:
        """Raise :class:`~sluice.errors.ConfigError` unless ``limit >= 1`` and ``period`` is finite and > 0
        (``what`` names the value in the message: ``bad rate limit 0/1.0s: ...``)."""
        if limit < 1 or not period > 0 or not math.isfinite(period):
            raise ConfigError(f"bad {what} {limit}/{period}s: need limit >= 1 and a finite period > 0")

    @classmethod
    def per_second(cls, limit: int) -> Rate:
        return cls(limit, 1.0)

    @classmethod
    def per_minute(cls, limit: int) -> Rate:
        return cls(limit, 60.0)

    @property
    def period_us(self) -> int:
        return round(self.period * 1_000_000)

    def scaled(self, share: float) -> Rate:
        """A ``share`` of this rate, never below one unit per period."""
        return Rate(max(1, math.floor(self.limit * share)), self.period)

    @property
    def units_per_second(self) -> float:
        """Units per second on average (``6000/min`` -> 100.0)."""
        return self.limit / self.period

    @property
    def interval(self) -> float:
        """Seconds between two units at this rate (the GCRA emission interval)."""
        return self.period / self.limit


class Decision(NamedTuple):
    """A limiter's answer. ``retry_after`` is seconds until the call could fit (``inf``: never).

    Immutable (a named tuple: it is made once per decision, on the hot path).
    """

    allowed: bool
    retry_after: float
    remaining: int
    server_time_us: int = 0  # Redis' clock at the decision; 0 when the outage policy decided
    degraded: bool = False  # decided by the outage policy, not by Redis
    frozen: bool = False  # refused by a freeze (``freeze=``): ``retry_after`` is the time it has left


class _Model(Protocol):
    def decide(self, now: int, cost: int = 1, peek: bool = False) -> tuple[int, ...]: ...


def _seconds(us: int) -> float:
    return math.inf if us < 0 else us / 1_000_000


class RateLimiterBase(CoalescingClient):
    """Common machinery; see :class:`GCRALimiter` and :class:`SlidingWindowLimiter`."""

    kind = "limit"

    def __init__(self, redis: Backend, **options: Unpack[LimiterOptions]) -> None:
        keys = options.get("keys") or KeySpace()
        clock = options.get("clock") or clock_of(redis).monotonic
        self._keys = keys
        self._runner = runner_for(redis, timeout=options.get("timeout", 0.5))
        self._coalescer = (
            Coalescer(self._runner, multi=_lua.MULTI) if options.get("coalesce", False) else None
        )
        self._clock = clock
        self._sleep = options.get("sleep") or clock_of(redis).sleep
        self._outage = OutageMonitor(
            f"{type(self).__name__}({keys.prefix})",
            options.get("outage") or FailClosed(),
            clock=clock,
            logger=options.get("logger"),
        )
        self._local: dict[str, _Model] = {}
        self._argv: dict[tuple[int, bool], str] = {}
        self._key_head = self.key("-")[:-2]  # "<prefix>:<kind>:{": a key is this + name + "}"
        self._freeze_head = keys.key(_FREEZE_KIND, "-")[:-2]
        self._frozen_seen: dict[str, float] = {}  # freeze name -> its end on the local clock, as last seen

    # -- what a subclass supplies
    @property
    @abstractmethod
    def _script(self) -> Script: ...

    @abstractmethod
    def _params(self, cost: int, peek: bool) -> str:
        """The script's ARGV[2]: its parameters, space-separated."""

    @abstractmethod
    def _parse(self, reply: Sequence[int]) -> Decision: ...

    @abstractmethod
    def _local_model(self) -> _Model: ...

    # -- public API
    @property
    def outage_stats(self) -> OutageStats:
        return self._outage.stats

    def key(self, name: str) -> str:
        return self._keys.key(self.kind, name)

    async def try_acquire(self, name: str, cost: int = 1, *, freeze: str | None = None) -> Decision:
        """Take ``cost`` units of ``name`` if they fit now; never waits. One round trip.

        ``freeze`` names a freeze (:class:`~sluice.resilience.Freezes`, usually ``name`` itself) read in
        the same script: while it holds, the answer is not allowed, ``frozen``, and ``retry_after`` is
        the time the freeze has left; nothing is taken. On Redis Cluster the freeze's name must carry the
        same hash tag as ``name`` (it does when it *is* ``name``).
        """
        return await self._decide(name, cost, False, freeze)

    async def peek(self, name: str, cost: int = 1, *, freeze: str | None = None) -> Decision:
        """Would ``cost`` units fit now? Takes nothing."""
        return await self._decide(name, cost, True, freeze)

    async def reset(self, name: str) -> None:
        """Forget everything about ``name`` (a full bucket again)."""
        self._local.pop(name, None)
        await self._runner.command("DEL", self.key(name))

    def acquire(
        self, name: str, cost: int = 1, *, max_wait: float | None = None, freeze: str | None = None
    ) -> Acquisition:
        """Wait until ``cost`` units of ``name`` are taken; ``await`` it or use ``async with``.

        Raises :class:`RateLimited` when ``max_wait`` seconds pass first (or the cost can never fit) and
        :class:`BackendUnavailable` when Redis is down under a fail-closed policy. With ``freeze`` (see
        :meth:`try_acquire`) a freeze is waited out like a full limit.
        """
        return Acquisition(lambda: self._wait(name, cost, max_wait, freeze))

    # -- machinery
    async def _wait(self, name: str, cost: int, max_wait: float | None, freeze: str | None) -> Decision:
        # max_wait runs on the primitive's clock (a FakeClock in tests), like the sleeps between tries
        deadline = None if max_wait is None else self._clock() + max_wait
        while True:
            decision = await self._decide(name, cost, False, freeze)
            if decision.allowed:
                return decision
            if decision.degraded and not self._outage.fail_open:
                raise BackendUnavailable(f"{self.key(name)}: redis unreachable, failing closed")
            if math.isinf(decision.retry_after):
                raise RateLimited(f"{self.key(name)}: cost {cost} can never fit", math.inf)
            wait = decision.retry_after
            if deadline is not None:
                left = deadline - self._clock()
                if left <= 0:
                    raise RateLimited(f"{self.key(name)}: no room within {max_wait} s", decision.retry_after)
                wait = min(wait, left)
            await self._sleep(wait)

    async def _decide(self, name: str, cost: int, peek: bool, freeze: str | None = None) -> Decision:
        # the hot path: kept flat on purpose (each extra coroutine layer costs about 1 % of a decision)
        if cost < 0 or not name or freeze == "":
            raise ConfigError("cost must not be negative and the name must not be empty")
        outage = self._outage
        if outage.stats.in_outage and not outage.should_try():
            return self._fallback(name, cost, peek, freeze)
        call = self._make_call(name, cost, peek, "", freeze)
        try:
            if self._coalescer is not None:
                reply = await self._coalescer.call(call)
            else:
                reply = await self._runner.run(*call)
        except BackendUnavailable as exc:
            outage.failed(exc)
            return self._fallback(name, cost, peek, freeze)
        if outage.stats.in_outage:
            outage.succeeded()
        decision = self._parse(list(map(int, reply.split())))
        if decision.frozen and freeze is not None:
            self._saw_freeze(freeze, decision.retry_after)
        return decision

    def _make_call(self, name: str, cost: int, peek: bool, now: int | str, freeze: str | None = None) -> Call:
        params = self._argv.get((cost, peek))
        if params is None:
            params = self._argv[(cost, peek)] = self._params(cost, peek)
        if freeze is None:
            return self._script, [self._key_head + name + "}"], [now, params]
        return self._script, [self._key_head + name + "}", self._freeze_head + freeze + "}"], [now, params]

    async def _call(
        self, name: str, cost: int, peek: bool, now_us: int, freeze: str | None = None
    ) -> list[int]:
        """The script's reply fields with the server clock overridden by ``now_us``: for tests only."""
        reply = await self._runner.run(*self._make_call(name, cost, peek, now_us, freeze))
        return list(map(int, reply.split()))

    def _saw_freeze(self, freeze: str, left: float) -> None:
        """Remember a freeze's end on the local clock: honoured by the fail-open policy while Redis is away."""
        if len(self._frozen_seen) >= _MAX_LOCAL_NAMES:
            self._frozen_seen.clear()
        self._frozen_seen[freeze] = self._clock() + left

    def _fallback(self, name: str, cost: int, peek: bool, freeze: str | None = None) -> Decision:
        self._outage.fell_back()
        policy = self._outage.policy
        if isinstance(policy, FailClosed):
            return Decision(False, policy.probe_interval, 0, degraded=True)
        if freeze is not None:
            left = self._frozen_seen.get(freeze, -math.inf) - self._clock()
            if left > 0:
                return Decision(False, left, 0, degraded=True, frozen=True)
        model = self._local.get(name)
        if model is None:
            if len(self._local) >= _MAX_LOCAL_NAMES:
                self._local.clear()
            model = self._local[name] = self._local_model()
        reply = model.decide(round(self._clock() * 1_000_000), cost, peek)
        return Decision(bool(reply[0]), _seconds(reply[1]), reply[2], degraded=True)


class Acquisition:
    """The result of ``acquire``: await it for the :class:`Decision`, or ``async with`` it."""

    __slots__ = ("_start",)

    def __init__(self, start: Callable[[], Coroutine[Any, Any, Decision]]) -> None:
        self._start = start

    def __await__(self) -> Generator[Any, None, Decision]:
        return self._start().__await__()

    async def __aenter__(self) -> Decision:
        return await self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
