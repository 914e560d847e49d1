"""What the worker tells :mod:`sluice.telemetry` about each delivery: one ``begin``, one ``end``.

The consumer calls :meth:`DeliveryRecorder.begin` when it starts on a delivery and
:meth:`DeliveryRecorder.end` once the runner decided its outcome, so the recorder knows how many run
(``in_progress``), how long each took and how long it waited in the queue (from
``x-sluice-created-at``). Each outcome of the model (:mod:`sluice_worker.outcome`) carries its telemetry
name (``metric``) and whether its handler ran (``ran``: its time is a run time); the recorder names
nothing itself. Task labels are the registry's task names only; any other name a message carries
counts as ``_unknown``, so labels stay bounded whatever arrives. Times are read from the worker's
:class:`~sluice.resilience.clock.Clock`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from sluice.protocol import H_CREATED_AT, H_TASK
from sluice.resilience.clock import SYSTEM, Clock
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker.outcome import Outcome

__all__ = ["DeliveryRecorder"]

log = logging.getLogger("sluice.worker")

UNKNOWN = "_unknown"


class DeliveryRecorder:
    """Feeds one process's :class:`~sluice.telemetry.Telemetry` from the consumer's hot path."""

    __slots__ = ("_clock", "_known", "_running", "_telemetry")

    def __init__(
        self, telemetry: Telemetry | NullTelemetry, tasks: Collection[str], *, clock: Clock = SYSTEM
    ) -> None:
        self._telemetry = telemetry
        self._clock = clock
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
        return self._clock.monotonic()

    def end(
        self, queue: str, headers: Mapping[str, Any] | None, outcome: Outcome | None, started: float
    ) -> None:
        """The delivery begun at ``started`` has its ``outcome`` (None: it ended without one, e.g. cancelled)."""
        self._running -= 1
        if outcome is None or not self._telemetry.enabled:
            return
        clock = self._clock
        took = clock.monotonic() - started
        name = outcome.metric
        task = headers.get(H_TASK) if headers else None
        if task not in self._known:
            task = UNKNOWN
        wait = None
        created = headers.get(H_CREATED_AT) if headers else None
        if isinstance(created, int):
            wait = max(0.0, clock.time() - took - created / 1000)
        try:
            self._telemetry.task_done(
                task,
                name,
                queue=queue,
                run_seconds=took if outcome.ran else None,
                wait_seconds=wait,
            )
        except ValueError as e:  # a metric outside OUTCOMES: a bug of ours, never a lost delivery
            log.warning("delivery not counted: %s", e)
