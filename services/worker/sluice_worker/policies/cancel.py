"""The cancel steps: a cancelled task is acked as ``cancelled`` instead of run; a running one is stopped.

A cancel (``sluice task cancel``, ``DELETE /v1/tasks/{id}``, ``TaskHandles.cancel``, or a rule by task
name and publish time) is recorded in Redis with a TTL; every worker holds the live ones in its
:class:`~sluice.handles.CancelWatch`, loaded at start and fed by a notification. Checking costs no
Redis round trip: :meth:`~sluice.handles.CancelWatch.is_cancelled` is local dict lookups.

Two steps, in every pipeline of a worker that has a watch (Redis configured):

- :class:`CancelStep`, outermost (only the tracking step is outside it, so a tracked task's record
  says ``cancelled``): a delivery of a cancelled task is :data:`~sluice_worker.outcome.CANCELLED_QUEUED`
  — acked, never run, retried or dead-lettered — wherever it comes from: its work queue, a delay tier,
  a retry, a redelivery after a worker restart.
- :class:`HandlerWatch`, innermost, around the call: it checks again (a cancel may come while the
  delivery waited further out, for a rate limit in place or a lease) and registers the delivery as
  running with the worker's :class:`Canceller` until the handler answered.

When a cancel arrives (the watch's ``on_cancel``), the :class:`Canceller` marks every running delivery
it covers (``Delivery.cancel_requested``) and cancels the asyncio task of those with an ``async``
handler: the handler gets ``CancelledError`` at once (the invoker tells this cancellation from the
worker's own and ``uncancel()``\\ s it, :mod:`sluice_worker.invoke`), and the delivery ends
:data:`~sluice_worker.outcome.CANCELLED_RUNNING` unless the handler returned all the same. A plain
function cannot be interrupted: it sees ``ctx.cancelled`` (:attr:`sluice.tasks.TaskContext.cancelled`,
the same local lookup, set up by the runner); if it then fails, the delivery ends cancelled (never retried), and any later delivery of the task is
cancelled by :class:`CancelStep`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sluice.tasks import Task
from sluice_worker.outcome import ACK, CANCELLED_QUEUED, CANCELLED_RUNNING, FailurePolicy, Outcome
from sluice_worker.policies.step import Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["CancelStep", "CancelView", "Canceller", "HandlerWatch"]

log = logging.getLogger("sluice.worker")


class CancelView(Protocol):
    """The live cancels as a worker sees them: :class:`sluice.handles.CancelWatch` (Redis), or the
    in-memory one of :mod:`sluice.testing`."""

    def is_cancelled(self, task_id: str, task: str, published_ms: int | None) -> bool: ...

    def on_cancel(self, callback: Callable[[str], None]) -> None: ...


def _cancelled(watch: CancelView, d: Delivery) -> bool:
    m = d.msg
    return watch.is_cancelled(m.id, m.task, m.created_at_ms)


def _not_to_run(watch: CancelView, d: Delivery) -> Outcome | None:
    """:data:`~sluice_worker.outcome.CANCELLED_QUEUED` if a live cancel covers ``d``, else ``None``."""
    if not _cancelled(watch, d):
        return None
    log.info("task %s (%s) is cancelled: acked without running", d.msg.id, d.msg.task)
    return CANCELLED_QUEUED


class Canceller:
    """The deliveries whose handler runs in this worker, and the cancel of those a cancel covers.

    One per worker; :meth:`cancel` is the :class:`~sluice.handles.CancelWatch`'s ``on_cancel``
    callback (on the event loop). ``cancelled`` counts the running deliveries it cancelled."""

    def __init__(self, watch: CancelView) -> None:
        self.watch = watch
        # id(delivery) -> (delivery, its asyncio task if its handler is async); the handler watch fills it
        self.registry: dict[int, tuple[Delivery, asyncio.Task[object] | None]] = {}
        self.cancelled = 0

    @property
    def running(self) -> int:
        return len(self.registry)

    def cancel(self, task_id: str) -> None:
        """A cancel arrived (``task_id``; any running delivery a rule covers too: every one is checked
        against the watch, a handful at most): cancel the running deliveries it covers."""
        for d, me in list(self.registry.values()):
            if d.cancel_requested or not (d.msg.id == task_id or _cancelled(self.watch, d)):
                continue
            d.cancel_requested = True
            self.cancelled += 1
            if me is not None and not me.done():
                log.info("cancelling task %s (%s): its handler is running", d.msg.id, d.msg.task)
                me.cancel("sluice task cancel")
            else:
                log.info(
                    "task %s (%s) cancelled while its plain handler runs (ctx.cancelled)",
                    d.msg.id,
                    d.msg.task,
                )


class CancelStep(Step):
    name = "cancel"

    def __init__(self, task: Task, watch: CancelView) -> None:
        super().__init__(task)
        self._watch = watch

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> CancelStep | None:
        return None if policies.canceller is None else cls(task, policies.canceller.watch)

    async def before(self, d: Delivery) -> Outcome | None:
        return _not_to_run(self._watch, d)


class HandlerWatch(Step):
    name = "handler watch"

    def __init__(self, task: Task, canceller: Canceller) -> None:
        super().__init__(task)
        self._watch = canceller.watch
        self._registry = canceller.registry
        self._is_async = task.is_async

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> HandlerWatch | None:
        return None if policies.canceller is None else cls(task, policies.canceller)

    async def before(self, d: Delivery) -> Outcome | None:
        stop = _not_to_run(self._watch, d)  # cancelled while it waited in a step further out
        if stop is None:  # running from here: no await until the call
            self._registry[id(d)] = (d, asyncio.current_task() if self._is_async else None)
        return stop

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        self._registry.pop(id(d), None)
        if d.cancel_requested and d.called and outcome is not ACK and d.error is not None:
            return CANCELLED_RUNNING  # not a failure: never retried, never dead-lettered
        return outcome
