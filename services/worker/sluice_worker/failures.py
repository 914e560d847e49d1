"""What a failed handler becomes: a delayed retry (the task's :class:`~sluice.resilience.RetryPolicy`) or the
dead-letter queue with the details of the last failure.

:class:`RetryOrDeadLetter` is the worker's :class:`~sluice_worker.outcome.FailurePolicy`. A task without a
retry policy, a non-retryable error, or the last attempt goes to the DLQ; the copy carries the exception
type, message, a traceback tail, the attempt count (``x-sluice-attempt``) and the first and last failure
times. Otherwise it becomes a :class:`~sluice_worker.outcome.Retry` (attempt + 1, republished to a delay
tier by :mod:`sluice_worker.delays`); the delay is the policy's backoff (at least an error's
``retry_after``), its ``deadline`` counted from the first publish. Times are read from the worker's
:class:`~sluice.resilience.clock.Clock`.
"""

from __future__ import annotations

import random
import traceback

from sluice.errors import SluiceError
from sluice.protocol import (
    H_ERROR_MESSAGE,
    H_ERROR_TYPE,
    H_FIRST_FAILURE_AT,
    H_LAST_FAILURE_AT,
    H_TRACEBACK,
    TaskMessage,
)
from sluice.resilience import RandomSource, next_delay
from sluice.resilience.clock import SYSTEM, Clock
from sluice.tasks import Task
from sluice_worker._wall import wall_ms
from sluice_worker.outcome import (
    HANDLER_ERROR,
    OUTCOME_TYPES,
    UNSUPPORTED_OUTCOME,
    DeadLettered,
    Outcome,
    Retry,
    describe,
    truncate_detail,
)

__all__ = ["RetryOrDeadLetter", "TaskTimeout", "error_headers", "settled", "traceback_tail"]

TRACEBACK_MAX_BYTES = 4096
_TRACEBACK_LINES = 12


class TaskTimeout(SluiceError, TimeoutError):
    """An ``async`` handler ran past its task's ``timeout`` and was cancelled (retryable)."""


def traceback_tail(error: BaseException, limit: int = TRACEBACK_MAX_BYTES) -> str:
    """The last lines of ``error``'s traceback, at most ``limit`` bytes (the end is what tells)."""
    lines = "".join(traceback.format_exception(error)).rstrip().splitlines()[-_TRACEBACK_LINES:]
    text = "\n".join(lines)
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return "..." + raw[-(limit - 3) :].decode("utf-8", "ignore")


class RetryOrDeadLetter:
    """The failure policy of a worker that knows task policies."""

    def __init__(self, rng: RandomSource | None = None, *, clock: Clock = SYSTEM) -> None:
        self._rng: RandomSource = rng or random.Random()
        self._clock = clock

    def on_error(self, task: Task, message: TaskMessage, error: BaseException) -> Outcome:
        now = wall_ms(self._clock)
        first = message.first_failure_ms if message.first_failure_ms is not None else now
        policy = task.policy.retry
        if policy is not None:
            delay = next_delay(
                policy,
                message.attempt,
                error,
                elapsed=max(0.0, (now - message.created_at_ms) / 1000),
                previous_delay=None,
                rng=self._rng,
            )
            if delay is not None:
                return Retry(delay, message.attempt + 1, first)
        return self.give_up(task, message, error)

    def give_up(
        self,
        task: Task,
        message: TaskMessage,
        error: BaseException,
        reason: str = HANDLER_ERROR,
        why: str = "",
    ) -> DeadLettered:
        """The DLQ copy of a failed delivery, with the details of ``error`` (``why``: an added note)."""
        now = wall_ms(self._clock)
        first = message.first_failure_ms if message.first_failure_ms is not None else now
        policy = task.policy.retry
        tries = f"attempt {message.attempt}" + (
            f" of {policy.max_attempts}" if policy is not None and policy.max_attempts else ""
        )
        return DeadLettered(
            reason,
            f"{describe(error)} ({tries}{'; ' + why if why else ''})",
            headers={**error_headers(error), H_FIRST_FAILURE_AT: first, H_LAST_FAILURE_AT: now},
        )


def error_headers(error: BaseException) -> dict[str, str]:
    """The headers of a dead copy that describe ``error``: its type, message and a traceback tail."""
    return {
        H_ERROR_TYPE: type(error).__qualname__,
        H_ERROR_MESSAGE: truncate_detail(str(error)),
        H_TRACEBACK: traceback_tail(error),
    }


def settled(outcome: object) -> Outcome:
    """What a delivery comes to, for whoever carries it out (the session, ``sluice.testing``): the
    runner's outcome as is; a ``GeneratorExit`` that came out of the runner instead (a future the handler
    awaited failed with it: asyncio threw it into the caller's frame, closing the runner's coroutines on
    the way) is that handler's failure; any other object (a foreign FailurePolicy's) is dead-lettered as
    ``unsupported_outcome``, so the message is kept."""
    if type(outcome) in OUTCOME_TYPES:
        return outcome  # type: ignore[return-value]
    if isinstance(outcome, GeneratorExit):
        return DeadLettered(HANDLER_ERROR, describe(outcome), error_headers(outcome))
    return DeadLettered(UNSUPPORTED_OUTCOME, repr(outcome))
