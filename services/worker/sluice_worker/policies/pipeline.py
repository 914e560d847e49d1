"""A task's pipeline: its policy steps in one fixed order around the one call of its handler.

:data:`ORDER` is the order, written once (each step's module says what it decides and costs)::

    [track] -> cancel -> eta -> retry budget -> rate limit -> idempotency -> concurrency -> breaker
        -> failure -> handler watch -> [track start] -> [timeout: the call]

Why this order: the cheap local check first and the scarce shared resources last, so that a task that
will not run holds nothing it would have to give back. A task not yet due (**eta**) must take nothing.
The **retry budget** deposits first attempts as they arrive (where the gate did, before the limits: a
first attempt deferred and back again deposits again, erring towards allowing retries), and asks for a
retry last, on the way out, once every other step had its say. The **rate limit** comes before a claim or a lease,
so a deferred task holds neither while it waits in a delay tier. **Idempotency** comes before the
lease and the breaker: a duplicate takes no slot and no trial. **Concurrency** before the **breaker**: a
task waiting for a slot takes no half-open trial. The **timeout** wraps the call
(:mod:`~sluice_worker.policies.timeout`). The **failure** step is innermost: the first to see a
failure, it turns it into a retry or a dead letter, so the breaker and the budget see that decision.
**Cancel** is outermost of the policies: a cancelled task takes nothing at all (a dict lookup,
:mod:`~sluice_worker.policies.cancel`); the **handler watch** is innermost, around the call, so the
handler of a task cancelled while it runs is cancelled (and a cancel that came while the delivery
waited further out is honoured before the call). The **tracking** steps (only in a tracked pipeline,
:mod:`~sluice_worker.policies.track`) wrap it all: ``track`` outermost writes the outcome every other
step settled on (a cancel's too), ``track start`` writes ``running`` at the call, once no step can
defer the delivery any more.

A :class:`Pipeline` is built once per task when the worker loads its registry
(:meth:`~sluice_worker.policies.shared.Policies.pipeline`); a step the task does not declare is not in
it. A task without policies keeps the due-time check, the run-time rate-limit override (any task can
be limited with ``sluice limits set``) and the failure step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from sluice.protocol import TaskMessage
from sluice.tasks import Task
from sluice_worker.outcome import ACK, Outcome
from sluice_worker.policies.breaker import BreakerStep
from sluice_worker.policies.cancel import CancelStep, HandlerWatch
from sluice_worker.policies.concurrency import ConcurrencyStep
from sluice_worker.policies.eta import Eta
from sluice_worker.policies.failure import Failure
from sluice_worker.policies.idempotency import IdempotencyStep
from sluice_worker.policies.rate_limit import RateLimitStep
from sluice_worker.policies.retry_budget import RetryBudgetStep
from sluice_worker.policies.step import Delivery, Step
from sluice_worker.policies.track import TrackStart, TrackStep

if TYPE_CHECKING:
    from sluice_worker.invoke import Invoker

__all__ = ["ORDER", "Pipeline"]

#: the steps, outermost first (the module doc says why in this order)
ORDER: Final[tuple[type[Step], ...]] = (
    TrackStep,
    CancelStep,
    Eta,
    RetryBudgetStep,
    RateLimitStep,
    IdempotencyStep,
    ConcurrencyStep,
    BreakerStep,
    Failure,
    HandlerWatch,
    TrackStart,
)


Before: TypeAlias = Callable[[Delivery], Awaitable[Outcome | None]]
After: TypeAlias = Callable[[Delivery, Outcome | None], Awaitable[Outcome | None]]


def _overrides(step: Step, hook: str) -> bool:
    return getattr(type(step), hook) is not getattr(Step, hook)


class Pipeline:
    """One task's steps and its handler's call; :meth:`run` answers each delivery's outcome."""

    __slots__ = (
        "_afters",
        "_afters_ack",
        "_afters_held",
        "_befores",
        "_delivers",
        "_invoke",
        "steps",
        "task",
        "tracked",
    )

    def __init__(self, task: Task, steps: Sequence[Step], invoke: Invoker) -> None:
        self.task = task
        self.steps = tuple(steps)
        self.tracked = any(s.tracking for s in self.steps)  # its deliveries' states are written
        self._invoke = invoke
        self._delivers = getattr(invoke, "delivers", False)
        # per step that has a before, outermost first: that before and the afters to run when the
        # delivery stops there (those of the steps entered so far, innermost first)
        befores: list[tuple[Before, tuple[After, ...]]] = []
        for i, step in enumerate(self.steps):
            if _overrides(step, "before"):
                entered = tuple(s.after for s in reversed(self.steps[:i]) if _overrides(s, "after"))
                befores.append((step.before, entered))
        self._befores = tuple(befores)
        self._afters = tuple(s.after for s in reversed(self.steps) if _overrides(s, "after"))
        # when the handler returned: a task without policies runs no after at all
        self._afters_ack = tuple(
            s.after for s in reversed(self.steps) if _overrides(s, "after") and s.after_on_ack
        )
        # ... and when a step that acts on ACK only if it held something (a slow sliding unit) held it
        self._afters_held = tuple(
            s.after
            for s in reversed(self.steps)
            if _overrides(s, "after") and (s.after_on_ack or s.after_when_held)
        )

    async def run(
        self, msg: TaskMessage, args: list[Any], headers: Mapping[str, Any] | None = None
    ) -> Outcome:
        """Take ``msg`` (its raw ``headers`` too, for the steps that read more than the contract's
        fields) through the steps, call the handler with ``args`` if every step lets it, and answer the
        outcome. Only a cancellation of the worker itself propagates (after every step entered has
        given back what it holds)."""
        d = Delivery(msg, headers)
        afters: tuple[After, ...] = ()
        outcome: Outcome | None = None
        try:
            for before, entered in self._befores:
                afters = entered  # the steps entered so far give back what they hold
                outcome = await before(d)
                if outcome is not None:
                    break
            else:
                afters = self._afters
                invoke = self._invoke
                # the worker's Invoker keeps the handler's value and a task cancel in the delivery; a
                # stand-in (the policy tests') answers the call's failure only
                error = await (invoke(self.task, args, d) if self._delivers else invoke(self.task, args))
                d.called = True
                if error is None:
                    outcome = ACK
                    afters = self._afters_held if d.ack_hold else self._afters_ack
                else:
                    d.error = error
        except BaseException:
            for after in afters:  # no outcome: each step entered gives back what it holds
                await after(d, None)
            raise
        for after in afters:
            outcome = await after(d, outcome)
        assert outcome is not None, "the failure step decides every failure"
        return outcome

    def __repr__(self) -> str:
        return f"<Pipeline {self.task.name}: {' -> '.join(s.name for s in self.steps)}>"
