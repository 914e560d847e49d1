"""The failure step: what a failed handler becomes (a retry or a dead letter), by the worker's failure policy.

In every pipeline, innermost: the first ``after`` to run once the handler failed. It hands the
failure to the :class:`~sluice_worker.outcome.FailurePolicy` (``sluice worker``:
:class:`~sluice_worker.failures.RetryOrDeadLetter`, the task's ``RetryPolicy``), so the steps further
out see the decision (the breaker records the failure, the retry budget may refuse the retry). No
Redis; a handler that returned costs nothing here.

A handler that raised :class:`sluice.Throttled` (the upstream said "not now") is not a failure: it is
deferred by the throttle's ``retry_after`` (``throttled``: no attempt, no retry budget, never the DLQ),
and the rate-limit step further out freezes its key fleet-wide
(:mod:`~sluice_worker.policies.rate_limit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.tasks import Task
from sluice.throttle import Throttled
from sluice_worker.outcome import THROTTLED, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["Failure"]


class Failure(Step):
    name = "failure"
    after_on_ack = False  # it acts on failures only

    def __init__(self, task: Task, failures: FailurePolicy) -> None:
        super().__init__(task)
        self._failures = failures

    @classmethod
    def build(cls, task: Task, policies: Policies | None, failures: FailurePolicy) -> Failure:
        return cls(task, failures)

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        error = d.error
        if outcome is None and error is not None:
            if isinstance(error, Throttled):
                return Deferred(THROTTLED, error.retry_after)
            return self._failures.on_error(self.task, d.msg, error)
        return outcome
