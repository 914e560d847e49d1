"""The in-memory backend: every primitive without Redis, on the reference models and a clock you control.

Pass a :class:`MemoryBackend` where a Redis client goes::

    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    limiter = GCRALimiter(backend, Rate.per_second(10), burst=2)
    breaker = CircuitBreaker(backend, "geo-api", BreakerPolicy(minimum_calls=4))

Every primitive built on one backend shares its state, as every process on one Redis does: two
limiters with the same key prefix and name draw from one bucket. Each script call is answered by the
reference model of that script (:mod:`sluice.resilience._reference`, the models the tests check the
Lua scripts against, reply for reply), with the keys' TTLs kept as the scripts set them, on the
backend's clock (its ``time()`` stands in for Redis' ``TIME``). The primitives themselves (waits,
caches, batching, outage policies) run the same code as on Redis. With a :class:`FakeClock` the
primitives' local clock and sleep default to that clock too, so nothing waits for real time.

``available = False`` makes every call fail as an unreachable Redis would (:class:`BackendUnavailable`),
so the outage policies can be tried too. Memory stays bounded: expired keys are dropped as they are met
and swept every few thousand writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import SYSTEM, Clock

if TYPE_CHECKING:
    from ._memory import MemoryRunner

__all__ = ["MemoryBackend"]

_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _Entry:
    model: Any
    expires_us: float  # the key's expiry on the backend's clock, in µs


class MemoryBackend:
    """The primitives' state in this process's memory (see the module docstring)."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SYSTEM
        self.available = True
        self._store: dict[str, _Entry] = {}
        self._writes = 0

    def now_us(self) -> int:
        """The backend's clock in µs: what ``TIME`` answers on Redis."""
        return int(self.clock.time() * 1_000_000)

    def keys(self, prefix: str = "") -> list[str]:
        """The live keys starting with ``prefix``, sorted."""
        now = self.now_us()
        return sorted(k for k, e in self._store.items() if k.startswith(prefix) and e.expires_us > now)

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; ``None`` when it does not exist."""
        entry = self.get(key)
        return None if entry is None else (entry.expires_us - self.now_us()) / 1_000_000

    def clear(self) -> None:
        """Forget every key (``FLUSHDB``)."""
        self._store.clear()

    def runner(self, timeout: float) -> MemoryRunner:
        """What the primitives send their script calls to (internal)."""
        from ._memory import MemoryRunner

        return MemoryRunner(self, timeout=timeout)

    # -- the store, for the runner. Keys expire on the backend's clock, as Redis' keys expire on its own
    # clock whatever a script's test-only clock override says.
    def get(self, key: str) -> _Entry | None:
        entry = self._store.get(key)
        if entry is not None and entry.expires_us <= self.now_us():
            del self._store[key]
            return None
        return entry

    def model(self, key: str) -> Any:
        """The model kept at ``key`` (``None`` when the key does not exist or expired)."""
        entry = self.get(key)
        return None if entry is None else entry.model

    def keep(self, key: str, model: Any, ttl_ms: int) -> None:
        """Store ``model`` at ``key``, expiring ``ttl_ms`` from now (``SET ... PX`` / ``PEXPIRE``)."""
        now = self.now_us()
        entry = self._store.get(key)
        if entry is None:
            self._store[key] = _Entry(model, now + ttl_ms * 1000)
        else:
            entry.model, entry.expires_us = model, now + ttl_ms * 1000
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep(now)

    def delete(self, key: str) -> bool:
        return self._store.pop(key, None) is not None

    def _sweep(self, now: int) -> None:
        for key in [k for k, e in self._store.items() if e.expires_us <= now]:
            del self._store[key]


def keep_ms(ttl_us: float) -> int:
    """The scripts' ``keep``: a TTL of ``ttl_us`` rounded up to ms, plus one second."""
    return math.ceil(ttl_us / 1000) + 1000
