"""sluice.handles: follow, await, cancel and deduplicate a task by its id (issue 13, docs/tasks.md).

* :class:`TaskHandles` -- the user's door: ``status``, ``wait``, ``result``, ``cancel``, ``cancel_batch``,
  unique enqueue (``claim_unique``/``release_unique``), the producer's ``mark_queued`` and the DLQ replay's
  ``replayed``.
* :class:`Tracker` -- the worker's batched, fail-open state writes.
* :class:`CancelWatch` -- the worker's local view of live cancels (no Redis call per check).

    async with TaskHandles(redis, settings.prefix) as handles:
        status = await handles.status(task_id)
        value = await handles.result(task_id, timeout=30)

Key layout: :mod:`sluice.handles._keys`; the state machine and the ordering rule: :mod:`sluice.handles.state`;
the costs of each call: :mod:`sluice.handles.client`.
"""

from __future__ import annotations

from sluice.policy import ResultPolicy

from .cancels import CancelWatch
from .client import TaskHandles
from .errors import (
    HandleError,
    ResultTooLarge,
    TaskCancelled,
    TaskDead,
    TaskFailed,
    TrackingUnavailable,
    WaitTimeout,
)
from .results import EncodedResult, encode_result
from .state import RANK, TERMINAL, ErrorInfo, State, Transition
from .status import CancelReport, QueuedInfo, TaskStatus, UniqueRelease
from .tracker import Tracker, TrackerStats

__all__ = [
    "RANK",
    "TERMINAL",
    "CancelReport",
    "CancelWatch",
    "EncodedResult",
    "ErrorInfo",
    "HandleError",
    "QueuedInfo",
    "ResultPolicy",
    "ResultTooLarge",
    "State",
    "TaskCancelled",
    "TaskDead",
    "TaskFailed",
    "TaskHandles",
    "TaskStatus",
    "Tracker",
    "TrackerStats",
    "TrackingUnavailable",
    "Transition",
    "UniqueRelease",
    "WaitTimeout",
    "encode_result",
]
