"""At most so many log lines per period: the dead-letter warnings of a poison flood do not flood the log."""

from __future__ import annotations

import logging

from sluice.resilience.clock import SYSTEM, Clock

__all__ = ["LogThrottle"]

log = logging.getLogger("sluice.worker")


class LogThrottle:
    """At most ``limit`` log lines per ``period`` seconds (on ``clock``); counts the ones it holds back.

    >>> t = LogThrottle(limit=2, period=10.0)
    >>> [t.allow() for _ in range(3)]
    [True, True, False]
    """

    __slots__ = ("_clock", "_count", "_limit", "_period", "_start", "suppressed")

    def __init__(self, limit: int = 10, period: float = 10.0, *, clock: Clock = SYSTEM) -> None:
        self._limit = limit
        self._period = period
        self._clock = clock
        self._start = clock.monotonic()
        self._count = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock.monotonic()
        if now - self._start >= self._period:
            self.flush()
            self._start, self._count = now, 0
        if self._count < self._limit:
            self._count += 1
            return True
        self.suppressed += 1
        return False

    def flush(self) -> None:
        """Log how many lines were held back, if any."""
        if self.suppressed:
            log.warning("%d more dead-lettered messages were not logged", self.suppressed)
            self.suppressed = 0
