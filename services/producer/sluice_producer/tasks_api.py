"""The task-handle endpoints of the producer: ``GET /v1/tasks/{id}`` (``?wait=S``) and ``DELETE /v1/tasks/{id}``.

``GET`` answers what Redis holds of the task (docs/tasks.md): 200 with its state (``unknown`` when it was
never tracked or its record expired). ``?wait=S`` is a long poll: it answers as soon as the task is in a
terminal state, or after ``S`` seconds (at most ``max_wait``) with its state then; the waiters of one
producer share one Redis pub/sub subscription (:meth:`sluice.handles.TaskHandles.wait`), so a waiter
costs no Redis call while it waits, and a task already finished is answered in one round trip.

``DELETE`` records a cancel (docs/tasks.md: it sticks across worker and broker restarts) and answers what
it did. Both answer 503 with ``Retry-After`` when Redis cannot be reached.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from sluice.handles import TaskHandles
from sluice_producer.models import CancelOut, ErrorOut, TaskStatusOut

__all__ = ["DEFAULT_MAX_WAIT", "TASK_ID_PATTERN", "task_router"]

DEFAULT_MAX_WAIT = 60.0  # seconds: the longest long poll
TASK_ID_PATTERN = r"^[A-Za-z0-9_\-.:]{1,200}$"

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "Redis cannot be reached (task tracking unavailable); see Retry-After",
    },
    422: {"model": ErrorOut, "description": "a malformed task id or wait"},
}

TaskId = Annotated[
    str, Path(pattern=TASK_ID_PATTERN, description="the task id (1-200 of A-Z a-z 0-9 _ - . :)")
]


def task_router(handles: TaskHandles, *, max_wait: float = DEFAULT_MAX_WAIT) -> APIRouter:
    """The routes, on ``handles`` (the app owns and closes it)."""
    router = APIRouter()

    @router.get("/v1/tasks/{task_id}", response_model=TaskStatusOut, responses=_UNAVAILABLE)
    async def task_status(
        task_id: TaskId,
        wait: float = Query(  # a default, not an annotation: max_wait is this function's
            0.0,
            ge=0,
            le=max_wait,
            description=f"long poll: answer once the task ended, or after this many seconds (at most "
            f"{max_wait:g}) with its state then; 0 answers at once",
        ),
    ) -> Any:
        """The task's state, attempt, times, worker, last error and result (docs/tasks.md)."""
        status = await (handles.wait(task_id, wait) if wait > 0 else handles.status(task_id))
        return status.as_dict()

    @router.delete("/v1/tasks/{task_id}", response_model=CancelOut, responses=_UNAVAILABLE)
    async def cancel_task(task_id: TaskId) -> Any:
        """Cancel the task: a queued, deferred or retrying one is cancelled at once and never runs (any
        worker that receives it later acks it as cancelled); a running one is asked to stop; an ended one
        is left as it is (the answer says so)."""
        (report,) = await handles.cancel(task_id)
        return report.as_dict()

    return router
