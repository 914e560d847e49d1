"""What a status read answers (:class:`TaskStatus`), what a cancel did (:class:`CancelReport`), and what the
producer records for a queued task (:class:`QueuedInfo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .state import TERMINAL, ErrorInfo, State, Transition

__all__ = ["CancelReport", "QueuedInfo", "TaskStatus", "UniqueRelease"]

#: When a unique key is released: on success only, on any end, or only by its TTL.
UniqueRelease = Literal["success", "end", "ttl"]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A task's record as read in one round trip. Times are ms since the epoch (Redis' clock for the ones
    the scripts stamp: started, finished, history)."""

    id: str
    state: State
    task: str | None = None
    queue: str | None = None
    attempt: int = 0
    published_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    worker: str | None = None  # "host:pid" of the worker that last wrote
    reason: str | None = None  # why deferred, or the dead reason
    next_run_ms: int | None = None  # deferred / retrying: when it runs next
    error: ErrorInfo | None = None  # the last failure
    result: Any = None  # the decoded JSON result (None if none)
    result_error: str | None = None  # e.g. "result too large: 70000 bytes > 65536"
    cancel_requested: bool = False
    generation: int = 0  # +1 per DLQ replay
    history: tuple[Transition, ...] = field(default=())  # oldest first, capped

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``id``, ``state``, ``attempt``, ``result``, ``error`` and the rest)."""
        return {
            "id": self.id,
            "state": str(self.state),
            "task": self.task,
            "queue": self.queue,
            "attempt": self.attempt,
            "generation": self.generation,
            "published_ms": self.published_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "worker": self.worker,
            "reason": self.reason,
            "next_run_ms": self.next_run_ms,
            "error": None if self.error is None else self.error.as_dict(),
            "result": self.result,
            "result_error": self.result_error,
            "cancel_requested": self.cancel_requested,
            "history": [t.as_dict() for t in self.history],
        }


@dataclass(frozen=True, slots=True)
class CancelReport:
    """What :meth:`TaskHandles.cancel` did to one task.

    ``previous`` is the state it found; ``state`` the state after: ``cancelled`` (it was queued, deferred,
    retrying or unknown), ``running`` with ``requested`` (the worker running it is told and finishes it),
    or the terminal state it already had (``already_ended``). The cancel is recorded either way, so a
    later delivery of the id is acked as cancelled without running.
    """

    id: str
    previous: State
    state: State
    requested: bool = False

    @property
    def already_ended(self) -> bool:
        return self.previous is self.state and self.state is not State.RUNNING

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "previous": str(self.previous),
            "state": str(self.state),
            "requested": self.requested,
            "already_ended": self.already_ended,
        }


@dataclass(frozen=True, slots=True)
class QueuedInfo:
    """A tracked task the producer published (or is about to): recorded as ``queued``."""

    id: str
    task: str
    queue: str
    published_ms: int
    unique_key: str | None = None
    unique_release: UniqueRelease = "end"
