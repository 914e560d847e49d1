"""Errors of the task handles, all under :class:`sluice.errors.HandleError`.

The tree::

    HandleError                     (sluice.errors)
    ├── TrackingUnavailable         Redis unreachable or too slow: the state is not known (not "unknown")
    ├── WaitTimeout                 the task did not end within the wait; ``status`` is the last one read
    ├── TaskFailed                  the task ended ``failed``; ``status`` carries its error
    ├── TaskDead                    the task ended ``dead`` (it is in the DLQ); ``status.reason`` says why
    ├── TaskCancelled               the task ended ``cancelled``
    └── ResultTooLarge              a succeeded task whose result was refused for its size (``result_error``);
                                    the worker never raises it (:func:`sluice.handles.encode_result`)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.errors import HandleError

if TYPE_CHECKING:
    from .status import TaskStatus

__all__ = [
    "HandleError",
    "ResultTooLarge",
    "TaskCancelled",
    "TaskDead",
    "TaskFailed",
    "TrackingUnavailable",
    "WaitTimeout",
]


class TrackingUnavailable(HandleError):
    """Redis did not answer: the task's state is unavailable (which is not the state ``unknown``)."""


class _Ended(HandleError):
    """A wait that ended otherwise than with a result: ``status`` is the task's last status read."""

    def __init__(self, message: str, status: TaskStatus) -> None:
        super().__init__(message)
        self.status = status


class WaitTimeout(_Ended):
    """The task did not end within the wait."""


class TaskFailed(_Ended):
    """The task ended ``failed``."""


class TaskDead(_Ended):
    """The task ended ``dead``: it is in the dead-letter queue."""


class TaskCancelled(_Ended):
    """The task ended ``cancelled``."""


class ResultTooLarge(HandleError):
    """A result refused for its size: the task succeeded, its result was not stored (``result_error``
    says so). :meth:`TaskHandles.result` raises it for such a task; ``status`` is the one read."""

    def __init__(self, message: str, status: TaskStatus | None = None) -> None:
        super().__init__(message)
        self.status = status
