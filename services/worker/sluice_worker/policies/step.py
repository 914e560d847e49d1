"""The shape of every policy step: a :class:`Step` with two hooks, and the :class:`Delivery` they see.

A step is built once per task (``build`` answers ``None`` when the task does not declare it) and is
called for each of that task's deliveries, in the pipeline's order (:mod:`sluice_worker.policies.pipeline`):

- ``before(delivery)``, on the way in: ``None`` lets the delivery go on to the next step (and in the
  end to the handler); an :data:`~sluice_worker.outcome.Outcome` stops it there (a deferral, a skip):
  the handler does not run.
- ``after(delivery, outcome)``, on the way out, in reverse order, for every step whose ``before`` let
  the delivery through (whatever happened further in): it sees the outcome so far and answers the
  outcome to go on with (the same one, mostly). The outcome is ``None`` in two cases: the handler
  failed (``delivery.error``) and no step has decided yet (the failure step, innermost, always does),
  or the delivery ends without an outcome (the worker cancelled it: ``delivery.error`` is ``None``
  too); a step then only gives back what it holds (a claim, a lease).

A step that does not need a hook does not override it: the pipeline calls only overridden hooks (and
skips the ``after`` of a step that acts on failures only, ``after_on_ack = False``, when the handler
returned, unless it held something for that delivery and says ``after_when_held``), so a task pays
only for the steps it declares. What a step holds for one delivery (a claim token, a lease, a breaker
permit) it keeps in the delivery (:meth:`Delivery.hold`), never in itself: one step object serves every
delivery of its task at once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sluice.protocol import TaskMessage
from sluice.tasks import Task
from sluice_worker.outcome import BACKEND_UNAVAILABLE, Deferred, FailurePolicy, Outcome

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["BACKEND_RETRY", "Delivery", "Step", "backend_down"]

log = logging.getLogger("sluice.worker")

BACKEND_RETRY = 1.0  # seconds to defer a task whose policy Redis cannot decide (fail closed)


class Delivery:
    """One delivery on its way through its task's pipeline: its message (and raw ``headers``, for the
    headers the contract's :class:`~sluice.protocol.TaskMessage` does not carry), what the handler
    returned (``value``) or failed with (``error``), and whether a cancel came while it ran."""

    __slots__ = ("_held", "ack_hold", "called", "cancel_requested", "error", "headers", "msg", "value")

    def __init__(self, msg: TaskMessage, headers: Mapping[str, Any] | None = None) -> None:
        self.msg = msg
        self.headers = headers
        self.called = False  # the handler was called and answered
        self.error: BaseException | None = None  # what it failed with
        self.value: Any = None  # what it returned
        self.cancel_requested = False  # the task was cancelled while its handler ran
        self._held: dict[int, Any] | None = None
        self.ack_hold = False  # a step whose after runs on ACK only when it holds something holds it

    def hold(self, step: Step, value: Any) -> None:
        """Keep ``value`` for ``step`` until its ``after``."""
        if self._held is None:
            self._held = {}
        if step.after_when_held:
            self.ack_hold = True
        self._held[id(step)] = value

    def held(self, step: Step) -> Any:
        """What ``step`` kept (``None`` if nothing)."""
        return None if self._held is None else self._held.get(id(step))


class Step:
    """A policy of one task. The hooks do nothing; a step overrides the ones it needs."""

    #: the step's name in docs and logs
    name: ClassVar[str] = "step"
    #: does ``after`` have anything to do when the handler returned (the outcome is ``ACK``)? A step
    #: that acts on failures only says no, and a task's successful runs skip its ``after``
    after_on_ack: ClassVar[bool] = True
    #: with ``after_on_ack = False``: does ``after`` run on ``ACK`` all the same when the step held
    #: something for that delivery (:meth:`Delivery.hold`)? The others' successful runs still skip it
    after_when_held: ClassVar[bool] = False
    #: a tracking step (:mod:`~sluice_worker.policies.track`): built only for the deliveries tracked
    tracking: ClassVar[bool] = False

    def __init__(self, task: Task) -> None:
        self.task = task

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> Step | None:
        """This step for ``task``, or ``None`` when the task does not need it."""
        raise NotImplementedError

    async def before(self, d: Delivery) -> Outcome | None:
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        return outcome

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.task.name}>"


def backend_down(task: Task, e: Exception) -> Deferred:
    """The deferral of a task whose policy Redis cannot decide (the steps fail closed)."""
    log.warning("task %s deferred: its policy cannot be decided: %s", task.name, e)
    return Deferred(BACKEND_UNAVAILABLE, BACKEND_RETRY)
