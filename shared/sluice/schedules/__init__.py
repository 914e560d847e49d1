"""sluice.schedules: periodic tasks, cron or interval, fired by a highly available scheduler (docs/schedules.md).

* :class:`Schedule`, :func:`every`, :func:`cron`, :class:`CatchUp` -- the declaration, checked at once;
* :class:`Schedules` -- code-declared schedules (``sluice scheduler --tasks MODULE`` syncs them);
* :func:`plan` -- what a scheduler fires now (catch-up, backlog, jitter), pure;
* :class:`ScheduleStore` -- the schedules, their states and the leader lease in Redis;
* :func:`build`, :func:`row` -- a schedule from command options, and as ``ls`` shows it;
* :func:`fire_message`, :func:`run_now`, :data:`H_SCHEDULE`, :data:`H_OCCURRENCE` -- what a fire publishes.
"""

from __future__ import annotations

from .errors import ScheduleError, StoreUnavailable, UnknownSchedule
from .firing import H_OCCURRENCE, H_SCHEDULE, FiredMessage, fire_id, fire_message, run_now
from .registry import Schedules, bind_to_task, load_modules
from .spec import DEFAULT_MAX_CATCH_UP, CatchUp, Schedule, check_name, cron, every, parse_catch_up
from .store import Entry, Lease, ScheduleState, ScheduleStore, SyncReport
from .timing import BACKLOG_CAP, GRACE_MS, Plan, jitter_ms, next_after, plan
from .view import build, row

__all__ = [
    "BACKLOG_CAP",
    "DEFAULT_MAX_CATCH_UP",
    "GRACE_MS",
    "H_OCCURRENCE",
    "H_SCHEDULE",
    "CatchUp",
    "Entry",
    "FiredMessage",
    "Lease",
    "Plan",
    "Schedule",
    "ScheduleError",
    "ScheduleState",
    "ScheduleStore",
    "Schedules",
    "StoreUnavailable",
    "SyncReport",
    "UnknownSchedule",
    "bind_to_task",
    "build",
    "check_name",
    "cron",
    "every",
    "fire_id",
    "fire_message",
    "jitter_ms",
    "load_modules",
    "next_after",
    "parse_catch_up",
    "plan",
    "row",
    "run_now",
]
