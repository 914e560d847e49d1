"""A fire: the task message of one occurrence, with its deterministic id and the schedule's headers.

* ``message_id`` (the task id) = ``{schedule}:{occurrence ms}`` for a scheduled fire, and
  ``{schedule}:run:{ms}`` for a manual one (``sluice schedule run``);
* ``x-sluice-schedule``: the schedule's name; ``x-sluice-occurrence``: the occurrence's due time, ms since
  the epoch (a manual run: the time it was asked for);
* ``x-sluice-idempotency-key``: the task id too, so a task declared ``idempotency=True`` has its effect
  once even for the one fire that can be published twice (a publish whose confirm was lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher

from .spec import Schedule
from .store import ScheduleStore

__all__ = ["H_OCCURRENCE", "H_SCHEDULE", "FiredMessage", "fire_id", "fire_message", "run_now"]

H_SCHEDULE = "x-sluice-schedule"  # str: the schedule's name
H_OCCURRENCE = "x-sluice-occurrence"  # int: the occurrence's due time, ms since the epoch


def fire_id(name: str, occurrence_ms: int) -> str:
    """The task id of a scheduled fire: the same on every replica, so one occurrence has one id."""
    return f"{name}:{occurrence_ms}"


@dataclass(frozen=True, slots=True)
class FiredMessage(TaskMessage):
    """A task message that carries the schedule's two headers."""

    schedule: str = ""
    occurrence_ms: int = 0

    def headers(self) -> dict[str, Any]:
        h = TaskMessage.headers(self)
        h[H_SCHEDULE] = self.schedule
        h[H_OCCURRENCE] = self.occurrence_ms
        return h


def fire_message(
    s: Schedule, occurrence_ms: int, queue: str, *, task_id: str | None = None, now_ms: int
) -> FiredMessage:
    """The message of one occurrence of ``s`` (``queue``: where it goes, resolved by the caller)."""
    tid = task_id or fire_id(s.name, occurrence_ms)
    return FiredMessage(
        task=s.task,
        payload=dict(s.payload),
        id=tid,
        queue=queue,
        created_at_ms=now_ms,
        idempotency_key=tid,
        schedule=s.name,
        occurrence_ms=occurrence_ms,
    )


async def run_now(
    publisher: Publisher, store: ScheduleStore, name: str, *, default_queue: str, now_ms: int
) -> str:
    """Fire schedule ``name`` once, now, outside its timing (its cursor does not move); answers the task id
    once the broker confirmed it."""
    entry = await store.get(name)
    s = entry.schedule
    msg = fire_message(s, now_ms, s.queue or default_queue, task_id=f"{s.name}:run:{now_ms}", now_ms=now_ms)
    await publisher.publish(msg)
    await store.record_run(s.name, msg.id, now_ms)
    return msg.id
