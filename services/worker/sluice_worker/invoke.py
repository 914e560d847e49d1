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
propagates: the delivery then goes back to the broker. The cancellation of a task cancelled while its
``async`` handler runs (``sluice task cancel``: :mod:`sluice_worker.policies.cancel` cancels the
delivery's asyncio task and sets ``Delivery.cancel_requested``) is not the worker's: it is taken back
(``Task.uncancel()``) and answered as the handler's ending, for the handler watch to make it
``cancelled``; whether the handler let the ``CancelledError`` out or swallowed it and returned.

What the handler returned is kept in the delivery (``Delivery.value``: a tracked task's result). (The ``timeout``'s own cancellation never gets
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
from sluice_worker.policies.step import Delivery
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

    #: the pipeline hands it the delivery (a stand-in invoker of the tests takes ``task, args`` only)
    delivers = True

    async def __call__(self, task: Task, args: list[Any], d: Delivery | None = None) -> BaseException | None:
        """Run ``task``'s handler with ``args`` for delivery ``d``; ``None`` if it returned (its value
        in ``d.value``), else what it raised."""
        value: Any = None
        try:
            if not task.is_async:
                value, error = await asyncio.get_running_loop().run_in_executor(
                    self._pool, _boxed, task.fn, args
                )
                if d is not None:
                    d.value = value
                return error
            if task.policy.timeout is None:
                value = await task.fn(*args)
            else:
                value = await within(task, args, task.policy.timeout)
        except asyncio.CancelledError as e:
            if d is not None and d.cancel_requested and task.is_async and _taken_back():
                return e  # the task was cancelled (not the worker): the handler watch says cancelled
            if cancelled_from_outside():
                raise  # the worker cancels this delivery: it goes back to the broker
            return e  # the handler raised it on its own: a failure like any other
        except BaseException as e:  # SystemExit, KeyboardInterrupt, ...: a failure of this task only
            return e
        if d is not None:
            d.value = value
            if d.cancel_requested:
                _taken_back()  # the handler swallowed its cancellation and returned: take it back all the same
        return None


def _taken_back() -> bool:
    """Take back the one cancellation of the running asyncio task a task cancel asked for; True unless
    the worker cancels it too (then the delivery goes back to the broker)."""
    me = asyncio.current_task()
    return me is not None and me.uncancel() == 0


def _boxed(fn: Callable[..., Any], args: list[Any]) -> tuple[Any, BaseException | None]:
    """Call a plain handler (in a pool thread): (its value, None) or (None, what it raised). What it
    raised is part of the *result*, never the future's exception: asyncio throws a future's exception
    into the awaiting coroutine, and a thrown ``GeneratorExit`` closes every coroutine on the way (the
    runner's too) instead of reaching it."""
    try:
        return fn(*args), None
    except BaseException as e:
        return None, e
