"""The timeout step: an ``async`` handler runs under its task's ``timeout``; past it, a ``TaskTimeout``.

It wraps the call itself, so it is not a ``before``/``after`` pair but the innermost part of the
pipeline: :class:`~sluice_worker.invoke.Invoker` runs an ``async`` handler through :func:`within`
when its task declares a ``timeout`` (``asyncio.timeout``: the event loop's clock; no Redis). A plain
function cannot be interrupted: its ``timeout`` is not enforced (docs/worker.md). The
:class:`~sluice_worker.failures.TaskTimeout` it raises is a failure like any other, for the failure
step after it (retried per the task's policy).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sluice.tasks import Task
from sluice_worker.failures import TaskTimeout

__all__ = ["within"]


async def within(task: Task, args: list[Any], seconds: float) -> Any:
    """Await ``task``'s handler with ``args`` for at most ``seconds`` (what it returned); past it,
    :class:`TaskTimeout`."""
    try:
        async with asyncio.timeout(seconds) as cm:
            return await task.fn(*args)
    except TimeoutError:
        if cm.expired():
            raise TaskTimeout(f"task {task.name} ran past its timeout of {seconds:g}s") from None
        raise  # a TimeoutError of the handler's own
