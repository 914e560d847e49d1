"""Idempotency store: claim a key before doing work, complete it (with a small result) after.

``claim`` answers :class:`Claimed` (you do the work, holding a lease of ``lease`` seconds),
:class:`InProgress` (someone else holds it; ``retry_after`` is what is left of their lease) or
:class:`Done` (it was done; here is its result). ``complete`` keeps the result for ``result_ttl``;
``release`` (on failure) lets the next claimant try. A claim whose holder died expires with its
lease. Each step is one script, so two claimants can never both get :class:`Claimed`.

With ``coalesce=True`` the steps issued while others are in flight share one pipeline (one round
trip; see :mod:`._coalesce`): each is still its own script, run in order, so batching changes the
cost of a claim, never its answer.

Deduplication keys want ``maxmemory-policy noeviction``: under a volatile eviction policy Redis may
evict them early (they all have a TTL) and a duplicate would go through.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from ._coalesce import Coalescer, CoalescingClient
from ._scripts import Arg, Call
from .errors import BackendUnavailable, ClaimLost
from .keys import KeySpace
from .outage import FailClosed, OutageMonitor, OutagePolicy, OutageStats

__all__ = ["ClaimResult", "Claimed", "Done", "IdempotencyStore", "InProgress"]

_LOCAL = "local:"


@dataclass(frozen=True, slots=True)
class Claimed:
    """The claim is yours: do the work, then ``complete`` or ``release`` with this token."""

    token: str


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another claimant holds the key for up to ``retry_after`` more seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Done:
    """The work was done; ``result`` is what its claimant stored (or ``None``)."""

    result: bytes | None


ClaimResult = Claimed | InProgress | Done


def _tokens() -> Callable[[], str]:
    """Claim tokens: a random prefix per store and a counter (unique without a syscall per claim)."""
    prefix = secrets.token_hex(12)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):x}"


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class IdempotencyStore(CoalescingClient):
    """Claims under ``<prefix>:idem:{<key>}``. Results are bytes, at most ``max_result_bytes``.

    ``coalesce``: batch the calls made while others are in flight into one pipeline (default off).
    """

    kind = "idem"

    def __init__(
        self,
        redis: Backend,
        *,
        lease: float = 30.0,
        result_ttl: float = 24 * 3600.0,
        max_result_bytes: int = 64 * 1024,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
        outage: OutagePolicy | None = None,
        clock: Callable[[], float] | None = None,
        token_factory: Callable[[], str] | None = None,
        logger: logging.Logger | None = None,
        coalesce: bool = False,
    ) -> None:
        if lease <= 0 or result_ttl <= 0:
            raise ConfigError("lease and result_ttl must be positive")
        self.lease = lease
        self.result_ttl = result_ttl
        self.max_result_bytes = max_result_bytes
        self._keys = keys or KeySpace()
        self._runner = runner_for(redis, timeout=timeout)
        # one batch on the wire at a time, and a small one lingers up to 2 ms for company: fewer, larger
        # batches (less client CPU per claim) for a few milliseconds of latency under load
        self._coalescer = (
            Coalescer(self._runner, multi=_lua.MULTI, max_inflight=1, min_batch=32, linger=0.002)
            if coalesce
            else None
        )
        clock = clock or clock_of(redis).monotonic
        self._clock = clock
        self._token = token_factory or _tokens()
        self._outage = OutageMonitor("IdempotencyStore", outage or FailClosed(), clock=clock, logger=logger)
        # local claims while failing open: key -> (token or None when done, result, expiry)
        self._local: dict[str, tuple[str | None, bytes | None, float]] = {}

    @property
    def outage_stats(self) -> OutageStats:
        return self._outage.stats

    def key(self, key: str) -> str:
        return self._keys.key(self.kind, key)

    async def _run(self, call: Call) -> Any:
        if self._coalescer is not None:
            return await self._coalescer.call(call)
        return await self._runner.run(*call)

    async def claim(self, key: str) -> ClaimResult:
        if not self._outage.should_try():
            return self._local_claim(key)
        token = self._token()
        try:
            reply = await self._run((_lua.CLAIM, [self.key(key)], ["", token, _us(self.lease)]))
        except BackendUnavailable as exc:
            self._outage.failed(exc)
            return self._local_claim(key)
        self._outage.succeeded()
        if reply == 1:
            return Claimed(token)
        if reply[0] == 2:
            return InProgress(max(0, reply[1]) / 1000)
        return Done(_bytes(reply[2]) if reply[1] == 1 else None)

    async def complete(self, key: str, token: str, result: bytes | None = None) -> None:
        """Mark ``key`` done (keeping ``result``); :class:`ClaimLost` if the claim is no longer yours."""
        if result is not None and len(result) > self.max_result_bytes:
            raise ConfigError(f"result of {len(result)} bytes is over the {self.max_result_bytes} byte cap")
        if token.startswith(_LOCAL):
            self._local_finish(key, token, done=True, result=result)
            return
        args: list[Arg] = [
            "",
            token,
            _us(self.result_ttl),
            0 if result is None else 1,
            b"" if result is None else result,
        ]
        if await self._run((_lua.CLAIM_COMPLETE, [self.key(key)], args)) != 1:
            raise ClaimLost(f"claim on {key!r} expired or was taken over before complete()")

    async def release(self, key: str, token: str) -> None:
        """Give the claim up (the work failed): the next claimant may try."""
        if token.startswith(_LOCAL):
            self._local_finish(key, token, done=False, result=None)
            return
        if await self._run((_lua.CLAIM_RELEASE, [self.key(key)], ["", token])) != 1:
            raise ClaimLost(f"claim on {key!r} expired or was taken over before release()")

    async def renew(self, key: str, token: str) -> None:
        """Extend the claim's lease by ``lease`` seconds from now (for long work)."""
        if token.startswith(_LOCAL):
            return
        if await self._run((_lua.CLAIM_RENEW, [self.key(key)], ["", token, _us(self.lease)])) != 1:
            raise ClaimLost(f"claim on {key!r} expired or was taken over before renew()")

    def _local_claim(self, key: str) -> ClaimResult:
        self._outage.fell_back()
        if isinstance(self._outage.policy, FailClosed):
            raise BackendUnavailable(f"idempotency claim on {key!r}: redis unreachable, failing closed")
        now = self._clock()
        held = self._local.get(key)
        if held is not None and held[2] > now:
            if held[0] is None:
                return Done(held[1])
            return InProgress(held[2] - now)
        token = _LOCAL + self._token()
        self._local[key] = (token, None, now + self.lease)
        return Claimed(token)

    def _local_finish(self, key: str, token: str, *, done: bool, result: bytes | None) -> None:
        held = self._local.get(key)
        if held is None or held[0] != token:
            raise ClaimLost(f"local claim on {key!r} is no longer held")
        if done:
            self._local[key] = (None, result, self._clock() + self.result_ttl)
        else:
            del self._local[key]
