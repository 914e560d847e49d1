"""What ``sluice schedule`` and ``/v1/schedules`` show of a schedule, and how they build one from options.

A row (``sluice schedule ls --json``, ``GET /v1/schedules``): ``name``, ``task``, ``spec``, ``cron``,
``every`` (seconds), ``tz``, ``queue``, ``payload``, ``catch_up``, ``max_catch_up``, ``jitter``, ``origin``
(``code`` or ``runtime``), ``paused``, ``next_fire`` / ``last_fire`` (ISO 8601 in UTC, or ``null``) with
``next_fire_ms`` / ``last_fire_ms`` (ms since the epoch), ``last_task_id``, ``last_fired_at_ms`` (when the
broker confirmed it), ``last_lag_ms`` (from the last occurrence's due time to that confirm), ``fires``
(occurrences fired, fleet-wide), ``caught_up`` (of those, missed occurrences fired late by the catch-up
policy), ``skipped`` (missed occurrences the policy dropped), ``pending_ms`` (an occurrence being fired now), ``last_run_task_id``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sluice.errors import ConfigError
from sluice.policy import parse_duration

from .spec import DEFAULT_MAX_CATCH_UP, Schedule, check_name, parse_catch_up
from .store import Entry
from .timing import jitter_ms, next_after

__all__ = ["build", "iso", "row"]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row(entry: Entry) -> dict[str, Any]:
    s, st = entry.schedule, entry.state
    nxt: int | None = None
    if not entry.paused and st.cursor is not None:
        o = next_after(s, st.cursor)
        nxt = o + jitter_ms(s, o)
    return {
        "name": s.name,
        "task": s.task,
        "spec": s.spec,
        "cron": s.cron,
        "every": s.interval,
        "tz": s.tz,
        "queue": s.queue,
        "payload": s.payload,
        "catch_up": str(s.catch_up),
        "max_catch_up": s.max_catch_up,
        "jitter": s.jitter,
        "origin": entry.origin,
        "paused": entry.paused,
        "next_fire": iso(nxt),
        "next_fire_ms": nxt,
        "last_fire": iso(st.last_occurrence),
        "last_fire_ms": st.last_occurrence,
        "last_task_id": st.last_task,
        "last_fired_at_ms": st.last_fired_at,
        "last_lag_ms": None
        if st.last_fired_at is None or st.last_occurrence is None
        else st.last_fired_at - st.last_occurrence,
        "fires": st.fires,
        "caught_up": st.caught_up,
        "skipped": st.skipped,
        "pending_ms": st.pending,
        "last_run_task_id": st.last_run_task,
    }


def build(
    name: str,
    task: str,
    *,
    cron: str | None = None,
    every: str | float | None = None,
    tz: str = "UTC",
    payload: str | dict[str, Any] | None = None,
    queue: str | None = None,
    jitter: str | float = 0.0,
    catch_up: str = "latest",
    max_catch_up: int = DEFAULT_MAX_CATCH_UP,
) -> Schedule:
    """A schedule from the options of ``sluice schedule add`` / the body of ``POST /v1/schedules``; every
    mistake is one :class:`ConfigError` line."""
    check_name(name)
    if not task:
        raise ConfigError("a schedule needs a task")
    if (cron is None) == (every is None):
        raise ConfigError("give exactly one of --cron and --every")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError as e:
            raise ConfigError(f"--payload is not JSON: {e}") from None
    if payload is not None and not isinstance(payload, dict):
        raise ConfigError("--payload must be a JSON object")
    return Schedule(
        name=name,
        task=task,
        cron=cron,
        interval=None if every is None else parse_duration(every),
        tz=tz,
        payload=dict(payload or {}),
        queue=queue,
        jitter=parse_duration(jitter),
        catch_up=parse_catch_up(catch_up),
        max_catch_up=max_catch_up,
    )
