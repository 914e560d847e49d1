"""Wall time in milliseconds since the epoch, read from the worker's :class:`~sluice.resilience.clock.Clock`."""

from __future__ import annotations

from sluice.resilience.clock import Clock

__all__ = ["wall_ms"]


def wall_ms(clock: Clock) -> int:
    """``clock.time()`` in whole milliseconds (what ``sluice.protocol.now_ms`` answers on the real clock)."""
    return int(clock.time() * 1000)
