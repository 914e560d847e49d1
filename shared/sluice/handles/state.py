"""The task state machine's vocabulary: the states, which are terminal, and the order of writes.

The states, spelled as the JSON value of ``"state"``::

    queued ──> deferred ──> running ──> succeeded | failed | dead | cancelled
      │  ^        │  ^        │ │
      │  └────────┘  └────────┘ └──> retrying ──> running (next attempt) ...
      └──> cancelled (queued, deferred, retrying or unknown: at once)
    dead ──(DLQ replay: generation + 1)──> queued

``unknown`` is what a task never seen (or expired) reads as; it is never written.

Ordering. Every write carries ``(generation, attempt, rank)``; it is applied only when that triple is
``>=`` the stored one (compared in that order), and a terminal state is final within its generation.
Ranks: queued 0, deferred 1, running 2, retrying 3, terminal 4. A DLQ replay (``TaskHandles.replayed``)
is the only write that raises the generation. So a redelivery after success writes ``(g, n, 2)`` over
``(g, n, 4)``: ignored; a slow worker's ``running`` of attempt 1 after attempt 2 ran: ignored.

What this asks of the writers: ``deferred`` (rank 1) is below ``running`` (rank 2) of the same attempt,
so a delivery writes ``running`` only once admitted (after the steps that may defer it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["RANK", "TERMINAL", "ErrorInfo", "State", "Transition"]


class State(StrEnum):
    """A task's state (the JSON value of ``"state"``)."""

    QUEUED = "queued"
    DEFERRED = "deferred"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


#: The states a task ends in: within a generation, nothing moves a task out of them.
TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.DEAD, State.CANCELLED})

#: The rank of each written state (the last part of the ordering triple).
RANK: dict[State, int] = {
    State.QUEUED: 0,
    State.DEFERRED: 1,
    State.RUNNING: 2,
    State.RETRYING: 3,
    State.SUCCEEDED: 4,
    State.FAILED: 4,
    State.DEAD: 4,
    State.CANCELLED: 4,
}


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure as recorded: the exception's type name and message."""

    type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException, max_chars: int = 2048) -> ErrorInfo:
        """The record of ``exc`` (qualified type name, ``str(exc)`` cut at ``max_chars``)."""
        kind = type(exc)
        name = (
            kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        )
        return cls(name, str(exc)[:max_chars])

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of a task's history: the state written, when (ms, Redis' clock), by which attempt."""

    state: State
    at_ms: int
    attempt: int
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"state": str(self.state), "at_ms": self.at_ms, "attempt": self.attempt, "detail": self.detail}
