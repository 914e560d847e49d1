"""What becomes of one delivery: the worker's one outcome model, with the telemetry name of each outcome.

The runner turns every delivery into an :data:`Outcome`; the consumer carries it out:

=====================  =====================================================  ===========================
outcome                what the consumer does                                  ``metric`` (telemetry)
=====================  =====================================================  ===========================
:data:`ACK`            ack (the task ran)                                      ``success``
:class:`Skipped`       ack (it must not run: a duplicate)                      ``deduplicated``
:class:`Deferred`      a confirmed copy to a delay tier, then ack; no attempt  by its reason: see below
:class:`Retry`         a confirmed copy for the next attempt, then ack         ``retried``
:class:`DeadLettered`  a confirmed copy to the DLQ with the reason, then ack   ``dead_lettered`` or ``failed``
:class:`Cancelled`     ack (the task was cancelled: never run again, retried   ``cancelled``
                       or dead-lettered)
=====================  =====================================================  ===========================

Every reason the worker gives is a constant here, and :data:`REASONS` maps each to its metric (a
deferral by a rate or concurrency limit or an upstream's throttle is ``deferred_limit``, by an open
breaker ``deferred_breaker``, anything else ``deferred``; a dead letter for a message that could not run at all is ``dead_lettered``,
one whose handler failed for good ``failed``). The metric names are :data:`sluice.telemetry.OUTCOMES`,
the vocabulary of the snapshots; ``tests/worker/test_outcome_model.py`` checks that the model, that
tuple and docs/metrics.md name the same outcomes and reasons. How a :class:`Deferred` or :class:`Retry`
travels (its delay tier, its headers) is :mod:`sluice_worker.delays`' business, computed where it is
published. A :class:`Cancelled` task (``sluice task cancel``, a cancel rule) is acked: before it ran (the
cancel step found it in the worker's local view of live cancels) or while it ran (its ``async`` handler
was cancelled, :mod:`sluice_worker.policies.cancel`); nothing else names outcomes.

A :class:`FailurePolicy` decides what a handler's exception becomes; the default dead-letters it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol, TypeAlias

from sluice.errors import MessageTooLarge, MissingHeader, NotJSON, UnknownTask
from sluice.protocol import TaskMessage
from sluice.tasks import Task
from sluice.telemetry import CANCELLED as CANCELLED_METRIC
from sluice.telemetry import (
    DEAD_LETTERED,
    DEDUPLICATED_METRIC,
    DEFERRED,
    DEFERRED_BREAKER,
    DEFERRED_LIMIT,
    FAILED,
    RETRIED,
    SUCCESS,
)

__all__ = [
    "ACK",
    "BACKEND_UNAVAILABLE",
    "BREAKER_OPEN",
    "CANCELLED",
    "CANCELLED_QUEUED",
    "CANCELLED_RUNNING",
    "CONCURRENCY",
    "DEDUPLICATED",
    "DETAIL_MAX_BYTES",
    "DUPLICATE",
    "ETA",
    "HANDLER_ERROR",
    "INVALID_PAYLOAD",
    "IN_PROGRESS",
    "MESSAGE_PROBLEMS",
    "OUTCOME_TYPES",
    "RATE_LIMITED",
    "REASONS",
    "RETRY",
    "RETRY_BUDGET_EXHAUSTED",
    "THROTTLED",
    "UNSUPPORTED_OUTCOME",
    "Ack",
    "Cancelled",
    "DeadLetterOnError",
    "DeadLettered",
    "Deferred",
    "FailurePolicy",
    "Outcome",
    "Retry",
    "Skipped",
    "describe",
    "metrics",
    "truncate_detail",
]

DETAIL_MAX_BYTES = 2048

# ---- reasons (the x-sluice-dead-reason of a dead copy; why a task was skipped, deferred or retried)
# a message that could not run at all (the protocol errors carry the first four: sluice.errors)
NOT_JSON: Final = NotJSON.reason
TOO_LARGE: Final = MessageTooLarge.reason
BAD_HEADERS: Final = MissingHeader.reason
UNKNOWN_TASK: Final = UnknownTask.reason
INVALID_PAYLOAD: Final = "invalid_payload"
MESSAGE_PROBLEMS: Final = frozenset({NOT_JSON, TOO_LARGE, BAD_HEADERS, UNKNOWN_TASK, INVALID_PAYLOAD})
# the handler failed for good
HANDLER_ERROR: Final = "handler_error"
RETRY_BUDGET_EXHAUSTED: Final = "retry_budget_exhausted"
# the handler failed and runs again
RETRY: Final = "retry"
# skipped: its idempotency key is already done
DUPLICATE: Final = "duplicate"
# deferred (no attempt spent)
ETA: Final = "eta"  # its x-sluice-eta is still ahead: the next hop
RATE_LIMITED: Final = "rate_limited"
# the upstream said "not now" (the handler raised sluice.Throttled), or a freeze it caused still holds
THROTTLED: Final = "throttled"
CONCURRENCY: Final = "concurrency"
BREAKER_OPEN: Final = "breaker_open"
IN_PROGRESS: Final = "in_progress"  # its idempotency key is claimed by a run elsewhere
BACKEND_UNAVAILABLE: Final = "backend_unavailable"  # Redis cannot decide its policy (fail closed)
# cancelled (sluice task cancel, DELETE /v1/tasks/{id}, a cancel rule): acked, never retried
CANCELLED: Final = "cancelled"
# not a reason of the model: the consumer's guard against an object a foreign FailurePolicy returned
UNSUPPORTED_OUTCOME: Final = "unsupported_outcome"

_DEFERRALS: Final = {
    ETA: DEFERRED,
    RATE_LIMITED: DEFERRED_LIMIT,
    THROTTLED: DEFERRED_LIMIT,
    CONCURRENCY: DEFERRED_LIMIT,
    BREAKER_OPEN: DEFERRED_BREAKER,
    IN_PROGRESS: DEFERRED,
    BACKEND_UNAVAILABLE: DEFERRED,
}
_SKIPS: Final = {DUPLICATE: DEDUPLICATED_METRIC}

#: every reason the worker gives, with the metric it is counted under
REASONS: Final[Mapping[str, str]] = {
    **dict.fromkeys(sorted(MESSAGE_PROBLEMS), DEAD_LETTERED),
    HANDLER_ERROR: FAILED,
    RETRY_BUDGET_EXHAUSTED: FAILED,
    RETRY: RETRIED,
    **_SKIPS,
    **_DEFERRALS,
    CANCELLED: CANCELLED_METRIC,
}


@dataclass(frozen=True, slots=True)
class Ack:
    """The task ran: acknowledge the delivery."""

    metric: ClassVar[str] = SUCCESS
    ran: ClassVar[bool] = True  # the handler ran: the delivery's time is a run time


ACK: Final = Ack()


@dataclass(frozen=True, slots=True)
class Skipped:
    """The task was not run and must not be: acknowledge the delivery. ``reason`` says why."""

    reason: str
    ran: ClassVar[bool] = False

    @property
    def metric(self) -> str:
        return _SKIPS.get(self.reason, DEDUPLICATED_METRIC)  # the one skip there is


# the task's idempotency key is already done: the effect happened, this delivery is a duplicate
DEDUPLICATED: Final = Skipped(DUPLICATE)


@dataclass(frozen=True, slots=True)
class Deferred:
    """The task must wait ``delay`` seconds for ``reason`` (a limit, an open breaker, its due time...):
    sent back for later without spending an attempt."""

    reason: str
    delay: float
    ran: ClassVar[bool] = False

    @property
    def metric(self) -> str:
        return _DEFERRALS.get(self.reason, DEFERRED)


@dataclass(frozen=True, slots=True)
class Retry:
    """The handler failed and runs again in ``delay`` seconds as attempt ``attempt``; ``first_failure_ms``
    is when its first attempt failed (carried by every retry, so the dead copy can tell)."""

    delay: float
    attempt: int
    first_failure_ms: int
    metric: ClassVar[str] = RETRIED
    ran: ClassVar[bool] = True
    reason: ClassVar[str] = RETRY


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """The task cannot run: move the message to the dead-letter queue with ``reason`` and ``detail``
    (and ``headers`` added to the copy, e.g. the last failure's details). Not to be confused with
    :class:`sluice.deadletters.DeadLetter`, a record read back from the DLQ by ``sluice dlq``."""

    reason: str
    detail: str
    headers: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", truncate_detail(self.detail))

    @property
    def metric(self) -> str:
        return DEAD_LETTERED if self.reason in MESSAGE_PROBLEMS else FAILED

    @property
    def ran(self) -> bool:
        return self.reason not in MESSAGE_PROBLEMS


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The task was cancelled: acknowledge the delivery; it is never retried nor dead-lettered.
    ``ran``: its handler was running when the cancel came (an ``async`` handler cancelled, or a
    plain function that failed after the cancel): its time is a run time."""

    ran: bool = False
    metric: ClassVar[str] = CANCELLED_METRIC
    reason: ClassVar[str] = CANCELLED


# found cancelled before its handler ran (wherever it was: queue, delay tier, retry)
CANCELLED_QUEUED: Final = Cancelled()
# cancelled while its handler ran
CANCELLED_RUNNING: Final = Cancelled(ran=True)


Outcome: TypeAlias = Ack | Skipped | Deferred | Retry | DeadLettered | Cancelled
OUTCOME_TYPES: Final = (Ack, Skipped, Deferred, Retry, DeadLettered, Cancelled)


def metrics() -> frozenset[str]:
    """Every metric an outcome of this model is counted under."""
    return frozenset({Ack.metric, Retry.metric, *REASONS.values()})


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
        return DeadLettered(HANDLER_ERROR, describe(error))
