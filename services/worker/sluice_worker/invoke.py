"""Calling a handler: the one call path of every task, at the heart of every task's pipeline.

:class:`Invoker` runs an ``async def`` handler on the event loop (under its task's ``timeout``, if any)
and a plain function in the worker's thread pool, and answers how the call ended: ``None`` (it returned)
or the exception it ended with, *whatever it is*. A handler can end with any ``BaseException``, and each
is a failure of that one task, handed to the failure policy like a ``ValueError`` would be:

- an ``asyncio.CancelledError`` the handler raised itself (client libraries leak them) while the worker
  is not cancelling it (``asyncio.current_task().cancelling() == 0``);
- ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` or any other ``BaseException`` subclass, on
  the loop or in a pool thread (letting ``SystemExit`` out of a task would stop the event loop, that is
  the whole worker, for one bad handler);
- a :class:`~sluice_worker.failures.TaskTimeout`, when an ``async`` handler ran past its ``timeout``.

Only a cancellation *of the worker itself* (a drain past its grace period, a lost connection)
propagates: the delivery then goes back to the broker. (The ``timeout``'s own cancellation never gets
out: ``asyncio.timeout`` turns it into the ``TaskTimeout`` above.)

A plain function cannot be stopped (Python threads cannot be killed): its ``timeout`` is not enforced and
a call that never returns keeps its thread, its slot and its own delivery (unacked) until it returns;
the consumer still acks every later delivery (docs/worker.md, "Handlers that never return").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sluice.tasks import Task
from sluice_worker.policies.timeout import within

__all__ = ["Invoker", "cancelled_from_outside"]


def cancelled_from_outside() -> bool:
    """Is the running task being cancelled (by the worker, a timeout, the event loop)? A CancelledError
    raised while this is False was raised by the code the task awaited, on its own."""
    me = asyncio.current_task()
    return me is None or me.cancelling() > 0


class Invoker:
    """Calls handlers; one per worker process, sharing the thread pool of plain functions."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Executor) -> None:
        self._pool = pool

    async def __call__(self, task: Task, args: list[Any]) -> BaseException | None:
        """Run ``task``'s handler with ``args``; ``None`` if it returned, else what it raised."""
        try:
            if not task.is_async:
                return await asyncio.get_running_loop().run_in_executor(self._pool, _boxed, task.fn, args)
            if task.policy.timeout is None:
                await task.fn(*args)
            else:
                await within(task, args, task.policy.timeout)
        except asyncio.CancelledError as e:
            if cancelled_from_outside():
                raise  # the worker cancels this delivery: it goes back to the broker
            return e  # the handler raised it on its own: a failure like any other
        except BaseException as e:  # SystemExit, KeyboardInterrupt, ...: a failure of this task only
            return e
        return None


def _boxed(fn: Callable[..., Any], args: list[Any]) -> BaseException | None:
    """Call a plain handler (in a pool thread); what it raised is the *result*, never the future's
    exception: asyncio throws a future's exception into the awaiting coroutine, and a thrown
    ``GeneratorExit`` closes every coroutine on the way (the runner's too) instead of reaching it."""
    try:
        fn(*args)
    except BaseException as e:
        return e
    return None
