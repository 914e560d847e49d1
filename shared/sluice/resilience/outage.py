"""What a primitive does when Redis is unreachable: an explicit policy per instance.

* :class:`FailClosed` -- refuse: limiters deny (``try_acquire`` answers "not allowed", ``acquire``
  raises :class:`BackendUnavailable`), the breaker and the idempotency store raise
  :class:`BackendUnavailable`, the retry budget allows no retry.
* :class:`FailOpen` -- carry on under a conservative *local* limit: each process admits
  ``local_share`` of the global limit on its own (rate limiters, semaphores, retry budget); the
  breaker lets calls through; the idempotency store claims in process memory.

Either way the outage is logged once when it starts and once when it ends, and counted
(:class:`OutageStats`). While Redis is down only one call per ``probe_interval`` tries it; the
others take the policy at once, so an outage costs no timeouts on the hot path. Every call that
does try is bounded by the primitive's ``timeout``: an outage is never a crash or a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sluice.errors import ConfigError

__all__ = ["FailClosed", "FailOpen", "OutageMonitor", "OutagePolicy", "OutageStats"]

_log = logging.getLogger("sluice.resilience")


@dataclass(frozen=True, slots=True)
class FailClosed:
    """Refuse while Redis is unreachable."""

    probe_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.probe_interval <= 0:
            raise ConfigError("probe_interval must be positive")


@dataclass(frozen=True, slots=True)
class FailOpen:
    """Keep going under a local limit of ``local_share`` times the global one (at least 1 unit)."""

    local_share: float = 0.1
    probe_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.local_share <= 1:
            raise ConfigError("local_share must be in (0, 1]")
        if self.probe_interval <= 0:
            raise ConfigError("probe_interval must be positive")


OutagePolicy = FailClosed | FailOpen


@dataclass(slots=True)
class OutageStats:
    """Counters of one primitive instance."""

    outages: int = 0
    failed_calls: int = 0
    fallback_decisions: int = 0
    in_outage: bool = False


class OutageMonitor:
    """Tracks one instance's view of Redis: logs an outage once, counts it, spaces out the probes."""

    def __init__(
        self,
        what: str,
        policy: OutagePolicy,
        *,
        clock: Callable[[], float],
        logger: logging.Logger | None = None,
    ) -> None:
        self.what = what
        self.policy = policy
        self.stats = OutageStats()
        self._clock = clock
        self._log = logger or _log
        self._next_probe = 0.0
        self._since = 0.0

    @property
    def fail_open(self) -> bool:
        return isinstance(self.policy, FailOpen)

    @property
    def local_share(self) -> float:
        """The share of a global limit this process may use alone while failing open."""
        return self.policy.local_share if isinstance(self.policy, FailOpen) else 1.0

    def should_try(self) -> bool:
        """False while in an outage and the next probe is not due: take the policy without a call."""
        return not self.stats.in_outage or self._clock() >= self._next_probe

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self.stats.failed_calls += 1
        self._next_probe = now + self.policy.probe_interval
        if not self.stats.in_outage:
            self.stats.in_outage = True
            self.stats.outages += 1
            self._since = now
            mode = "failing open (local limit)" if self.fail_open else "failing closed"
            self._log.warning("%s: redis unreachable, %s: %s", self.what, mode, exc)

    def succeeded(self) -> None:
        if self.stats.in_outage:
            self.stats.in_outage = False
            self._log.warning(
                "%s: redis reachable again after %.1f s", self.what, self._clock() - self._since
            )

    def fell_back(self) -> None:
        self.stats.fallback_decisions += 1
