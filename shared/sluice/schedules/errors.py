"""The schedules' errors: ``ScheduleError`` (under :class:`sluice.errors.SluiceError`) and its subtree.

A bad declaration (cron expression, time zone, interval, payload) is a :class:`~sluice.errors.ConfigError`.
"""

from __future__ import annotations

from sluice.errors import SluiceError

__all__ = ["ScheduleError", "StoreUnavailable", "UnknownSchedule"]


class ScheduleError(SluiceError):
    """Root of the schedules' errors."""


class StoreUnavailable(ScheduleError):
    """Redis cannot be reached: the schedules (and the leader lease) are unavailable."""


class UnknownSchedule(ScheduleError):
    """No schedule of that name in the store."""
