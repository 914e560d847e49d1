"""Circuit breaker whose state every process shares through Redis.

Closed: calls go through and each outcome is counted in per-bucket counters; when at least
``minimum_calls`` were made in the last ``window`` seconds and the failure rate reaches
``failure_rate``, the breaker opens for ``open_for`` seconds. Then the first caller turns it
half-open and ``half_open_permits`` trial calls are granted, atomically, fleet-wide; as many
successes close it, one failure opens it again. A half-open round whose trials never report
(their holders died) starts over after ``trial_timeout``.

Each process caches an open state it saw for ``open_cache`` seconds (never past the end of the open
time), so an open breaker refuses without a round trip. With ``closed_cache`` > 0 it also caches a
closed state, saving the ``allow`` round trip of most calls at the price of learning that another
process opened the breaker up to that much later (or at its next recorded outcome, whose reply
carries the state). Half-open is never cached: trial permits always come from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from ._reference import BreakerModel
from ._scripts import Arg
from .errors import BackendUnavailable, CircuitOpen
from .keys import KeySpace
from .memory import MemoryBackend
from .outage import FailClosed, OutageMonitor, OutagePolicy, OutageStats

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "Permit", "breaker_states"]

P = ParamSpec("P")
T = TypeVar("T")


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


#: The ``state`` field of a breaker's hash, as the scripts write it; absent means closed.
_CODES = {"o": BreakerState.OPEN, "h": BreakerState.HALF_OPEN}


def _decode(raw: object) -> BreakerState:
    code = raw.decode() if isinstance(raw, bytes) else raw
    return _CODES.get(code, BreakerState.CLOSED) if isinstance(code, str) else BreakerState.CLOSED


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how it probes its way back. Defaults follow resilience4j's spirit."""

    failure_rate: float = 0.5
    minimum_calls: int = 20
    window: float = 10.0
    buckets: int = 10
    open_for: float = 30.0
    half_open_permits: int = 3
    trial_timeout: float | None = None  # default: open_for
    failure_on: tuple[type[BaseException], ...] = (Exception,)
    ignore: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1 or self.minimum_calls < 1 or self.buckets < 1:
            raise ConfigError("failure_rate in (0, 1], minimum_calls >= 1 and buckets >= 1 are required")
        if self.window <= 0 or self.open_for <= 0 or self.half_open_permits < 1:
            raise ConfigError("window > 0, open_for > 0 and half_open_permits >= 1 are required")

    def counts_as_failure(self, error: BaseException) -> bool:
        return isinstance(error, self.failure_on) and not isinstance(error, self.ignore)


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; ``trial`` when it is one of the half-open trials."""

    trial: bool = False
    local: bool = False


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class CircuitBreaker:
    """``async with breaker.guard(): ...`` raises :class:`CircuitOpen` instead of calling a failing service."""

    kind = "breaker"

    def __init__(
        self,
        redis: Backend,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
        outage: OutagePolicy | None = None,
        open_cache: float = 1.0,
        closed_cache: float = 0.0,
        clock: Callable[[], float] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self.key = (keys or KeySpace()).key(self.kind, name)
        self._runner = runner_for(redis, timeout=timeout)
        clock = clock or clock_of(redis).monotonic
        self._clock = clock
        self._open_cache = open_cache
        self._closed_cache = closed_cache
        self._outage = OutageMonitor(
            f"CircuitBreaker({name})", outage or FailClosed(), clock=clock, logger=logger
        )
        self._seen = BreakerState.CLOSED
        self._seen_until = -math.inf
        self._open_until = -math.inf
        p = self.policy
        trial = p.open_for if p.trial_timeout is None else p.trial_timeout
        self._allow_args: list[Arg] = [
            p.half_open_permits,
            _us(trial),
            _us(max(p.window, p.open_for + trial)),
        ]
        self._record_args: list[Arg] = [
            _us(p.window / p.buckets),
            p.buckets,
            p.minimum_calls,
            repr(p.failure_rate),
            _us(p.open_for),
            p.half_open_permits,
            _us(max(p.window, p.open_for + trial)),
        ]

    @property
    def outage_stats(self) -> OutageStats:
        return self._outage.stats

    async def allow(self) -> Permit:
        """A permit to call, or :class:`CircuitOpen` (with ``retry_after``)."""
        now = self._clock()
        if now < self._seen_until:
            if self._seen is BreakerState.OPEN:
                raise CircuitOpen(f"breaker {self.name} is open", self._open_until - now)
            if self._seen is BreakerState.CLOSED:
                return Permit()
        if not self._outage.should_try():
            return self._fallback()
        try:
            reply = await self._call_allow()
        except BackendUnavailable as exc:
            self._outage.failed(exc)
            return self._fallback()
        self._outage.succeeded()
        allowed, trial, retry_us, state = reply[0], reply[1], reply[2], BreakerState(reply[3])
        self._remember(state, retry_us)
        if not allowed:
            raise CircuitOpen(f"breaker {self.name} is {state.name.lower()}", retry_us / 1_000_000)
        return Permit(trial=bool(trial))

    async def record(self, permit: Permit, success: bool) -> BreakerState:
        """Report how a permitted call went; answers the state it left the breaker in."""
        if permit.local or not self._outage.should_try():
            return self._seen
        try:
            reply = await self._call_record(success, permit.trial)
        except BackendUnavailable as exc:
            self._outage.failed(exc)
            return self._seen
        self._outage.succeeded()
        state = BreakerState(reply[0])
        self._remember(state, reply[1])
        return state

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[Permit]:
        """Run the block if the breaker allows, and record how it went (cancellation is not recorded)."""
        permit = await self.allow()
        try:
            yield permit
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self.record(permit, not self.policy.counts_as_failure(exc))
            raise
        await self.record(permit, True)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self.guard():
            return await fn(*args, **kwargs)

    async def state(self) -> BreakerState:
        """The state stored in Redis now (one round trip; for dashboards and tests)."""
        return _decode(await self._runner.command("HGET", self.key, "state"))

    async def reset(self) -> None:
        """Close the breaker and forget its counts."""
        self._seen_until = -math.inf
        await self._runner.command("DEL", self.key)

    async def _call_allow(self, now_us: int | None = None) -> list[int]:
        """Raw script reply; ``now_us`` overrides the server clock, for tests only."""
        reply: list[int] = await self._runner.run(
            _lua.BREAKER_ALLOW, [self.key], ["" if now_us is None else now_us, *self._allow_args]
        )
        return reply

    async def _call_record(self, success: bool, trial: bool, now_us: int | None = None) -> list[int]:
        """Raw script reply; ``now_us`` overrides the server clock, for tests only."""
        args = ["" if now_us is None else now_us, int(success), int(trial), *self._record_args]
        reply: list[int] = await self._runner.run(_lua.BREAKER_RECORD, [self.key], args)
        return reply

    def _remember(self, state: BreakerState, retry_us: int) -> None:
        now = self._clock()
        self._seen = state
        if state is BreakerState.OPEN:
            self._open_until = now + retry_us / 1_000_000
            self._seen_until = min(now + self._open_cache, self._open_until)
        elif state is BreakerState.CLOSED:
            self._seen_until = now + self._closed_cache
        else:
            self._seen_until = now

    def _fallback(self) -> Permit:
        self._outage.fell_back()
        if isinstance(self._outage.policy, FailClosed):
            raise BackendUnavailable(f"breaker {self.name}: redis unreachable, failing closed")
        return Permit(local=True)


async def breaker_states(
    backend: Backend, keys: KeySpace | None = None, *, max_keys: int = 200
) -> dict[str, BreakerState]:
    """The stored state of the breakers under ``keys``, by name (sorted; at most ``max_keys`` of them).

    For dashboards (``sluice metrics``): on Redis one ``SCAN`` and one pipeline of ``HGET``; the caller
    bounds the time it may take. A breaker unused for longer than its TTL has no key and is not listed
    (it is closed). Errors of the client (``RedisError``, ``OSError``) are the caller's to handle.
    """
    head = (keys or KeySpace()).key(CircuitBreaker.kind, "-")[:-3]  # "<prefix>:breaker:"
    if isinstance(backend, MemoryBackend):
        models = {k[len(head) + 1 : -1]: backend.model(k) for k in backend.keys(head)}
        found = {n: m.state for n, m in models.items() if isinstance(m, BreakerModel)}
        return {n: _decode(found[n]) for n in sorted(found)[:max_keys]}
    names: list[str] = []
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in head) + "{*}"
    async for raw in backend.scan_iter(match=pattern, count=200):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        names.append(key[len(head) + 1 : -1])
        if len(names) >= max_keys:
            break
    if not names:
        return {}
    pipe = backend.pipeline(transaction=False)
    for name in names:
        pipe.hget(head + "{" + name + "}", "state")
    codes = await pipe.execute()
    return {n: _decode(c) for n, c in sorted(zip(names, codes, strict=True))}
