"""What becomes of one delivery, and the policy that decides it when a handler fails.

The runner turns every delivery into an :class:`Outcome`; the consumer carries it out: :data:`ACK` (the
task ran), :class:`Skipped` (it must not run, e.g. :data:`DEDUPLICATED`: acked, counted under its own
name), :class:`DeadLetter` (it cannot run: the message goes to the dead-letter queue with a reason) and
``Republish`` (:mod:`sluice_worker.delays`: sent back for later). A :class:`FailurePolicy` decides what a handler's exception becomes; the default
dead-letters it. Retries (a ``Retry(delay)`` outcome, republished to a delay queue) plug in here later
without touching the consumer's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from sluice.protocol import TaskMessage
from sluice.tasks import Task

if TYPE_CHECKING:
    from sluice_worker.delays import Republish

__all__ = [
    "ACK",
    "DEDUPLICATED",
    "DETAIL_MAX_BYTES",
    "DUPLICATE",
    "HANDLER_ERROR",
    "INVALID_PAYLOAD",
    "Ack",
    "DeadLetter",
    "DeadLetterOnError",
    "FailurePolicy",
    "Outcome",
    "Skipped",
    "describe",
    "truncate_detail",
]

DETAIL_MAX_BYTES = 2048

# reasons written to the dead-letter headers (the protocol errors carry their own: not_json, too_large,
# bad_headers, unknown_task)
INVALID_PAYLOAD = "invalid_payload"
HANDLER_ERROR = "handler_error"


@dataclass(frozen=True, slots=True)
class Ack:
    """The task ran: acknowledge the delivery."""


ACK: Final = Ack()


@dataclass(frozen=True, slots=True)
class Skipped:
    """The task was not run and must not be: acknowledge the delivery. ``reason`` says why and
    ``metric`` is its telemetry outcome (one of :data:`sluice.telemetry.OUTCOMES`)."""

    reason: str
    metric: str


DUPLICATE = "duplicate"
# the task's idempotency key is already done: the effect happened, this delivery is a duplicate
DEDUPLICATED: Final = Skipped(DUPLICATE, "deduplicated")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The task cannot run: move the message to the dead-letter queue with ``reason`` and ``detail``
    (and ``headers`` added to the copy, e.g. the last failure's details)."""

    reason: str
    detail: str
    headers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", truncate_detail(self.detail))


# Republish (sluice_worker.delays): send the task back for later (retries, deferrals)
Outcome: TypeAlias = "Ack | Skipped | DeadLetter | Republish"


def truncate_detail(text: str, limit: int = DETAIL_MAX_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, marked with an ellipsis when cut."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


class FailurePolicy(Protocol):
    """Decides what a handler's failure becomes. ``error`` is whatever the handler ended with: any
    ``BaseException`` (a ``CancelledError`` it raised itself, ``SystemExit``, ...), not only an
    ``Exception`` (see :mod:`sluice_worker.invoke`)."""

    def on_error(self, task: Task, message: TaskMessage, error: BaseException) -> Outcome: ...


def describe(error: BaseException) -> str:
    """``"ExceptionType: message"``, or the type alone when the message is empty (``KeyboardInterrupt``)."""
    kind, text = type(error).__qualname__, str(error)
    return f"{kind}: {text}" if text else kind


class DeadLetterOnError:
    """The default policy: every handler failure dead-letters the task (reason ``handler_error``)."""

    def on_error(self, task: Task, message: TaskMessage, error: BaseException) -> Outcome:
        return DeadLetter(HANDLER_ERROR, describe(error))
