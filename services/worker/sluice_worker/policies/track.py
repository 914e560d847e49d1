"""The tracking steps: a tracked task's state, written through the worker's :class:`~sluice.handles.Tracker`.

A delivery is tracked when its task declares ``track=True`` or ``result=...``, when ``SLUICE_TRACK_ALL``
is on, or when the message asks for it (``x-sluice-track``, or a unique key to release:
``x-sluice-unique-key``); the runner then takes it through the task's *tracked* pipeline. Any other
delivery has no tracking step at all: no Redis call, nothing on its path.

Two steps, both ``tracking`` (built only into a tracked pipeline):

- :class:`TrackStep`, outermost, sees the outcome every other step settled on and writes it:
  ``deferred`` (why, and when it runs next; a retry's hops through the delay tiers are not written
  again), ``retrying`` (the error, the next run), or the end, awaited before the ack
  (:meth:`~sluice.handles.Tracker.ended`, never raises): ``succeeded`` (with the result when the task
  asks for one; a duplicate skipped by its idempotency key is ``succeeded`` too, reason ``duplicate``),
  ``failed`` (the handler failed for good: ``handler_error``), ``dead`` (dead-lettered for any other
  reason, e.g. ``retry_budget_exhausted``), ``cancelled``. The end also releases the delivery's unique
  key (its ``x-sluice-unique-release`` mode).
- :class:`TrackStart`, innermost, writes ``running`` just before the handler is called, so a delivery
  deferred further out never shows as running.

Writes are fire-and-forget but the end's, batched across deliveries by the tracker, and fail open:
Redis down, the task runs all the same (the tracker counts and logs it). Each write carries
(generation, attempt, rank): a late or repeated one never moves a task backwards (a redelivery after
success stays ``succeeded``).

The result is the handler's return value serialised by pydantic with the task's return annotation as
its schema (``Task.result_adapter``, :func:`sluice.handles.encode_result`), at most the task's
``ResultPolicy.max_bytes``, kept ``ResultPolicy.ttl`` seconds: a larger one, or one that cannot be
serialised, is refused: the record says why (``result_error``), the task still ``succeeded``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sluice.handles import ErrorInfo, State, Tracker, encode_result
from sluice.protocol import H_ATTEMPT, H_GENERATION, H_QUEUE, H_TASK, H_UNIQUE_KEY, H_UNIQUE_RELEASE
from sluice.resilience.clock import Clock
from sluice.tasks import Task
from sluice.telemetry import RESULTS_REFUSED, RESULTS_STORED, TRACKED, NullTelemetry, Telemetry
from sluice_worker._wall import wall_ms
from sluice_worker.outcome import (
    ETA,
    HANDLER_ERROR,
    Ack,
    Cancelled,
    DeadLettered,
    Deferred,
    FailurePolicy,
    Outcome,
    Retry,
    Skipped,
)
from sluice_worker.policies.step import Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["TrackStart", "TrackStep", "dead_on_arrival", "generation"]

log = logging.getLogger("sluice.worker")


def generation(headers: Mapping[str, Any] | None) -> int:
    """The delivery's generation: its ``x-sluice-generation`` (a DLQ replay's), 0 when absent."""
    g = headers.get(H_GENERATION) if headers else None
    return g if isinstance(g, int) and not isinstance(g, bool) and g >= 0 else 0


def _text(headers: Mapping[str, Any] | None, name: str) -> str | None:
    v = headers.get(name) if headers else None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v if isinstance(v, str) and v else None


async def dead_on_arrival(
    tracker: Tracker, message_id: str, headers: Mapping[str, Any] | None, dead: DeadLettered
) -> None:
    """The end of a tracked message that cannot run at all (not JSON, bad headers, unknown task, invalid
    payload: dead-lettered by the runner before any step): ``dead``, with the reason, awaited."""
    attempt = headers.get(H_ATTEMPT) if headers else None
    await tracker.ended(
        message_id,
        state=State.DEAD,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0 else 1,
        generation=generation(headers),
        error=ErrorInfo(dead.reason, dead.detail),
        reason=dead.reason,
        unique_key=_text(headers, H_UNIQUE_KEY),
        unique_release=_text(headers, H_UNIQUE_RELEASE) or "end",
        task=_text(headers, H_TASK),
        queue=_text(headers, H_QUEUE),
    )


def _error(d: Delivery, fallback: str, detail: str = "") -> ErrorInfo:
    """The delivery's failure as recorded (``fallback``/``detail`` when it has no exception)."""
    return ErrorInfo(fallback, detail) if d.error is None else ErrorInfo.of(d.error)


class TrackStep(Step):
    name = "track"
    tracking = True

    def __init__(
        self, task: Task, tracker: Tracker, clock: Clock, telemetry: Telemetry | NullTelemetry
    ) -> None:
        super().__init__(task)
        self._tracker = tracker
        self._clock = clock
        self._telemetry = telemetry
        self._result = task.policy.result

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> TrackStep | None:
        t = policies.tracker
        return None if t is None else cls(task, t, policies.clock, policies.telemetry)

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        if outcome is None:  # the worker cancelled the delivery: it is redelivered, nothing to say
            return outcome
        m, t = d.msg, self._tracker
        gen = generation(d.headers)
        if isinstance(outcome, Deferred):
            if outcome.reason == ETA and m.first_failure_ms is not None:
                return outcome  # a retry on its way through the tiers: its record says retrying
            t.deferred(
                m.id,
                attempt=m.attempt,
                generation=gen,
                reason=outcome.reason,
                next_run_ms=self._next_ms(outcome.delay),
                task=m.task,  # the record's task, queue and publish time, if no queued write made it
                queue=m.queue,
                published_ms=m.created_at_ms,
            )
        elif isinstance(outcome, Retry):
            t.retrying(
                m.id,
                attempt=m.attempt,
                generation=gen,
                error=_error(d, "error"),
                next_run_ms=self._next_ms(outcome.delay),
                task=m.task,
                queue=m.queue,
                published_ms=m.created_at_ms,
            )
        else:
            await self._end(d, outcome, gen)
        return outcome

    def _next_ms(self, delay: float) -> int:
        return wall_ms(self._clock) + round(delay * 1000)

    async def _end(self, d: Delivery, outcome: Ack | Skipped | Cancelled | DeadLettered, gen: int) -> None:
        """The terminal write of ``outcome`` (with the result, the unique key's release), awaited."""
        m = d.msg
        result_json: bytes | None = None
        result_error: str | None = None
        error: ErrorInfo | None = None
        reason: str | None = None
        ttl: float | None = None
        if isinstance(outcome, Ack):
            state = State.SUCCEEDED
            if self._result is not None:
                ttl = self._result.ttl
                got = encode_result(self.task.result_adapter, d.value, self._result.max_bytes)
                result_json, result_error = got.json, got.error
                if result_error is None:
                    self._telemetry.handle_event(RESULTS_STORED)
                else:
                    self._telemetry.handle_event(RESULTS_REFUSED)
                    log.warning("task %s (%s): result refused: %s", m.id, self.task.name, result_error)
        elif isinstance(outcome, Skipped):
            state, reason = State.SUCCEEDED, outcome.reason
        elif isinstance(outcome, Cancelled):
            state, reason = State.CANCELLED, Cancelled.reason
        else:
            state = State.FAILED if outcome.reason == HANDLER_ERROR else State.DEAD
            reason, error = outcome.reason, _error(d, outcome.reason, outcome.detail)
        self._telemetry.handle_event(TRACKED)
        await self._tracker.ended(
            m.id,
            state=state,
            attempt=m.attempt,
            generation=gen,
            error=error,
            reason=reason,
            result_json=result_json,
            result_error=result_error,
            unique_key=_text(d.headers, H_UNIQUE_KEY),
            unique_release=_text(d.headers, H_UNIQUE_RELEASE) or "end",
            ttl=ttl,
            task=m.task,
            queue=m.queue,
            published_ms=m.created_at_ms,
        )


class TrackStart(Step):
    name = "track start"
    tracking = True

    def __init__(self, task: Task, tracker: Tracker) -> None:
        super().__init__(task)
        self._tracker = tracker

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> TrackStart | None:
        t = policies.tracker
        return None if t is None else cls(task, t)

    async def before(self, d: Delivery) -> Outcome | None:
        m = d.msg
        self._tracker.running(
            m.id,
            task=m.task,
            queue=m.queue,
            attempt=m.attempt,
            generation=generation(d.headers),
            published_ms=m.created_at_ms,
        )
        return None
