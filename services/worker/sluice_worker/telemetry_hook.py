"""What the worker tells :mod:`sluice.telemetry` about each delivery: one ``begin``, one ``end``.

The consumer calls :meth:`DeliveryRecorder.begin` when it starts on a delivery and
:meth:`DeliveryRecorder.end` once the runner decided its outcome, so the recorder knows how many run
(``in_progress``), how long each took and how long it waited in the queue (from
``x-sluice-created-at``). The outcome object is named here:

    Ack                                    success
    Skipped                                its ``metric``  (deduplicated: an idempotency key already done)
    DeadLetter, a message/payload problem  dead_lettered   (not_json, too_large, bad_headers,
                                                             unknown_task, invalid_payload)
    DeadLetter, anything else              failed          (the handler failed for good)
    Republish "retry"                      retried
    Republish "rate_limited"/"concurrency" deferred_limit
    Republish "breaker_open"               deferred_breaker
    Republish, other reasons               deferred        (eta hop, duplicate running, Redis down)

An outcome object with a ``metric`` attribute (one of :data:`sluice.telemetry.OUTCOMES`) is counted
under that name instead: the gate's :data:`~sluice_worker.outcome.DEDUPLICATED` says ``deduplicated``.
Task labels are the registry's task names only; any other name a message carries counts as
``_unknown``, so labels stay bounded whatever arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

from sluice.protocol import H_CREATED_AT, H_TASK
from sluice.telemetry import NullTelemetry, Telemetry

__all__ = ["DEFERRALS", "MESSAGE_PROBLEMS", "DeliveryRecorder", "outcome_name"]

log = logging.getLogger("sluice.worker")

UNKNOWN = "_unknown"
# dead-letter reasons of a message that could not run at all (dead_lettered; any other: failed)
MESSAGE_PROBLEMS = frozenset({"not_json", "too_large", "bad_headers", "unknown_task", "invalid_payload"})
# why a Republish was sent -> its outcome (any other why: deferred)
DEFERRALS = {
    "retry": "retried",
    "rate_limited": "deferred_limit",
    "concurrency": "deferred_limit",
    "breaker_open": "deferred_breaker",
}
_RAN = frozenset({"success", "failed", "retried"})  # the handler ran: its time is a run time


def outcome_name(outcome: object) -> str:
    """The telemetry outcome of a runner outcome (see the module doc)."""
    metric = getattr(outcome, "metric", None)
    if isinstance(metric, str):
        return metric
    reason = getattr(outcome, "reason", None)
    if reason is not None:  # a DeadLetter
        return "dead_lettered" if reason in MESSAGE_PROBLEMS else "failed"
    why = getattr(outcome, "why", None)
    if why is not None:  # a Republish
        return DEFERRALS.get(why, "deferred")
    return "success"


class DeliveryRecorder:
    """Feeds one process's :class:`~sluice.telemetry.Telemetry` from the consumer's hot path."""

    __slots__ = ("_known", "_running", "_telemetry")

    def __init__(self, telemetry: Telemetry | NullTelemetry, tasks: Collection[str]) -> None:
        self._telemetry = telemetry
        self._known = frozenset(tasks)
        self._running = 0
        telemetry.gauge("in_progress", lambda: self._running)

    @classmethod
    def off(cls) -> DeliveryRecorder:
        """A recorder that counts nothing (telemetry off)."""
        return cls(NullTelemetry(), ())

    @property
    def running(self) -> int:
        return self._running

    def begin(self) -> float:
        """A delivery starts; returns the start time to hand back to :meth:`end`."""
        self._running += 1
        return time.monotonic()

    def end(
        self, queue: str, headers: Mapping[str, Any] | None, outcome: object | None, started: float
    ) -> None:
        """The delivery begun at ``started`` has its ``outcome`` (None: it ended without one, e.g. cancelled)."""
        self._running -= 1
        if outcome is None or not self._telemetry.enabled:
            return
        took = time.monotonic() - started
        name = outcome_name(outcome)
        task = headers.get(H_TASK) if headers else None
        if task not in self._known:
            task = UNKNOWN
        wait = None
        created = headers.get(H_CREATED_AT) if headers else None
        if isinstance(created, int):
            wait = max(0.0, time.time() - took - created / 1000)
        try:
            self._telemetry.task_done(
                task,
                name,
                queue=queue,
                run_seconds=took if name in _RAN else None,
                wait_seconds=wait,
            )
        except ValueError as e:  # an outcome named outside OUTCOMES: a bug of ours, never a lost delivery
            log.warning("delivery not counted: %s", e)
