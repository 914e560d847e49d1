"""The task-handle endpoints of the producer: ``GET /v1/tasks/{id}`` (``?wait=S``) and ``DELETE /v1/tasks/{id}``.

``GET`` answers what Redis holds of the task (docs/tasks.md): 200 with its state (``unknown`` when it was
never tracked or its record expired). ``?wait=S`` is a long poll: it answers as soon as the task is in a
terminal state, or after ``S`` seconds (at most ``max_wait``) with its state then; the waiters of one
producer share one Redis pub/sub subscription (:meth:`sluice.handles.TaskHandles.wait`), so a waiter
costs no Redis call while it waits, and a task already finished is answered in one round trip. When the
producer drains (SIGTERM), every open long poll is answered at once with the state then, as at its
bound: the client asks again (another replica) instead of being cut off by the drain's deadline.

``DELETE`` records a cancel (docs/tasks.md: it sticks across worker and broker restarts) and answers what
it did. Both answer 503 with ``Retry-After`` when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from sluice.handles import TaskHandles, TaskStatus
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


def task_router(
    handles: TaskHandles, *, max_wait: float = DEFAULT_MAX_WAIT, draining: asyncio.Event | None = None
) -> APIRouter:
    """The routes, on ``handles`` (the app owns and closes it); ``draining``: set when the producer
    drains, which ends every open long poll."""
    router = APIRouter()
    drain = draining or asyncio.Event()

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
        status = await (
            _wait_or_drain(handles, task_id, wait, drain) if wait > 0 else handles.status(task_id)
        )
        return status.as_dict()

    @router.delete("/v1/tasks/{task_id}", response_model=CancelOut, responses=_UNAVAILABLE)
    async def cancel_task(task_id: TaskId) -> Any:
        """Cancel the task: a queued, deferred or retrying one is cancelled at once and never runs (any
        worker that receives it later acks it as cancelled); a running one is asked to stop; an ended one
        is left as it is (the answer says so)."""
        (report,) = await handles.cancel(task_id)
        return report.as_dict()

    return router


async def _wait_or_drain(handles: TaskHandles, task_id: str, wait: float, drain: asyncio.Event) -> TaskStatus:
    """The task's status once it ended or after ``wait`` seconds, or at once when ``drain`` is set."""
    if drain.is_set():
        return await handles.status(task_id)
    waiting = asyncio.ensure_future(handles.wait(task_id, wait))
    drained = asyncio.ensure_future(drain.wait())
    try:
        await asyncio.wait((waiting, drained), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in (waiting, drained):
            if not f.done():
                f.cancel()
        await asyncio.gather(waiting, drained, return_exceptions=True)
    if waiting.done() and not waiting.cancelled():
        return waiting.result()  # its own error (Redis unavailable) is raised here
    return await handles.status(task_id)
