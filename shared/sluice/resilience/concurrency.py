"""Distributed semaphore: at most ``limit`` holders of a name across every process.

Leases live in a sorted set scored by their expiry (server time). The acquire script first drops
expired leases -- a crashed holder's slot comes back after one lease time -- then grants one if
there is room. A running holder's heartbeat renews its lease every ``heartbeat`` seconds. Each grant
carries a fencing token that only grows (never below the server clock in µs, so it grows even after
the keys expired): pass it to the protected resource so it can refuse a holder whose lease lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sluice.errors import ConfigError

from . import _lua
from ._backend import Backend, clock_of, runner_for
from .errors import BackendUnavailable, ConcurrencyLimited, LeaseLost
from .keys import KeySpace
from .outage import FailClosed, OutageMonitor, OutagePolicy, OutageStats

__all__ = ["ConcurrencyLimiter", "Lease"]

_log = logging.getLogger("sluice.resilience")


@dataclass(slots=True)
class Lease:
    """One granted slot. ``token`` is the fencing token (0 for a local lease taken while failing open)."""

    name: str
    token: int
    local: bool = False
    granted_at_us: int = 0  # Redis' clock at the grant (0 for a local lease)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if a renewal found this lease gone: call it before a write."""
        if self.lost.is_set():
            raise LeaseLost(f"lease {self.name}/{self.token} expired or was reclaimed while held")

    lost: asyncio.Event = field(default_factory=asyncio.Event)


class ConcurrencyLimiter:
    """``async with sem.acquire("stripe") as lease:`` -- at most ``limit`` holders at once, fleet-wide."""

    kind = "sem"

    def __init__(
        self,
        redis: Backend,
        limit: int,
        *,
        lease: float = 30.0,
        heartbeat: float | None = None,
        poll: float = 0.05,
        keys: KeySpace | None = None,
        timeout: float = 0.5,
        outage: OutagePolicy | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if limit < 1 or lease <= 0 or poll <= 0:
            raise ConfigError("limit >= 1, lease > 0 and poll > 0 are required")
        self.limit = limit
        self.lease = lease
        self.heartbeat = lease / 3 if heartbeat is None else heartbeat
        if not 0 < self.heartbeat < lease:
            raise ConfigError("heartbeat must be shorter than the lease")
        self._poll = poll
        self._keys = keys or KeySpace()
        self._runner = runner_for(redis, timeout=timeout)
        local = clock_of(redis)
        clock = self._clock = clock or local.monotonic
        self._sleep = sleep or local.sleep
        self._log = logger or _log
        self._outage = OutageMonitor(
            f"ConcurrencyLimiter({self._keys.prefix})", outage or FailClosed(), clock=clock, logger=logger
        )
        self._local_held: dict[str, int] = {}

    @property
    def outage_stats(self) -> OutageStats:
        return self._outage.stats

    def keys_of(self, name: str) -> tuple[str, str]:
        return self._keys.key(self.kind, name, "leases"), self._keys.key(self.kind, name, "fence")

    async def try_acquire(self, name: str) -> tuple[Lease | None, float]:
        """A lease if a slot is free now, else ``None`` and the seconds until the oldest lease expires.

        The caller must :meth:`release` the lease (and :meth:`renew` it if it holds it long);
        :meth:`acquire` does both.
        """
        if not self._outage.should_try():
            return self._fallback(name)
        try:
            reply = await self._call_acquire(name)
        except BackendUnavailable as exc:
            self._outage.failed(exc)
            return self._fallback(name)
        self._outage.succeeded()
        if reply[0] == 1:
            return Lease(name, int(reply[1]), granted_at_us=int(reply[3])), 0.0
        return None, reply[1] / 1_000_000

    @contextlib.asynccontextmanager
    async def acquire(self, name: str, *, max_wait: float | None = None) -> AsyncIterator[Lease]:
        """Hold a slot of ``name`` for the block, renewing it in the background.

        Raises :class:`ConcurrencyLimited` if no slot frees within ``max_wait`` seconds. If a renewal finds the
        lease gone (expired during a long stall), ``lease.lost`` is set and ``lease.check()``
        raises :class:`LeaseLost`: call it before a write.
        """
        lease = await self._wait(name, max_wait)
        stop = asyncio.Event()
        beat = None if lease.local else asyncio.create_task(self._heartbeat(lease, stop))
        try:
            yield lease
        finally:
            if beat is not None:
                stop.set()
                beat.cancel()
                # bounded: a renewal stuck in the client must not hold the release up
                await asyncio.wait([beat], timeout=self._runner.timeout + 0.5)
            await self.release(lease)

    async def renew(self, lease: Lease) -> bool:
        """Push the lease's expiry one lease time ahead; False (and ``lease.lost`` set) if it was gone."""
        if lease.local:
            return True
        leases, _ = self.keys_of(lease.name)
        ok = await self._runner.run(
            _lua.LEASE_RENEW, [leases], ["", round(self.lease * 1_000_000), lease.token]
        )
        if ok != 1:
            lease.lost.set()
        return bool(ok == 1)

    async def release(self, lease: Lease) -> None:
        """Give the slot back. Never raises for Redis trouble: an unreleased lease expires by itself."""
        if lease.local:
            self._local_held[lease.name] -= 1
            return
        try:
            await self._runner.command("ZREM", self.keys_of(lease.name)[0], lease.token)
        except BackendUnavailable as exc:
            self._log.warning("lease %s/%s not released (it will expire): %s", lease.name, lease.token, exc)

    async def _call_acquire(self, name: str, now_us: int | None = None) -> list[int]:
        """The raw script reply; ``now_us`` overrides the server clock, for tests only."""
        args = ["" if now_us is None else now_us, self.limit, round(self.lease * 1_000_000)]
        reply: list[int] = await self._runner.run(_lua.LEASE_ACQUIRE, self.keys_of(name), args)
        return reply

    async def _wait(self, name: str, max_wait: float | None) -> Lease:
        # max_wait runs on the primitive's clock (a FakeClock in tests), like the sleeps between tries
        deadline = None if max_wait is None else self._clock() + max_wait
        while True:
            lease, retry = await self.try_acquire(name)
            if lease is not None:
                return lease
            wait = min(retry, self._poll)
            if deadline is not None:
                left = deadline - self._clock()
                if left <= 0:
                    raise ConcurrencyLimited(f"{name}: no slot within {max_wait} s", retry)
                wait = min(wait, left)
            await self._sleep(wait)

    async def _heartbeat(self, lease: Lease, stop: asyncio.Event) -> None:
        while True:
            await self._sleep(self.heartbeat)
            if stop.is_set():
                return
            try:
                if not await self.renew(lease):
                    self._log.warning(
                        "lease %s/%s was lost before its holder finished", lease.name, lease.token
                    )
                    return
            except BackendUnavailable as exc:
                self._log.warning("lease %s/%s not renewed: %s", lease.name, lease.token, exc)

    def _fallback(self, name: str) -> tuple[Lease | None, float]:
        self._outage.fell_back()
        policy = self._outage.policy
        if isinstance(policy, FailClosed):
            raise BackendUnavailable(f"{name}: redis unreachable, failing closed")
        held = self._local_held.get(name, 0)
        if held >= max(1, math.floor(self.limit * policy.local_share)):
            return None, self._poll
        self._local_held[name] = held + 1
        return Lease(name, 0, local=True), 0.0
