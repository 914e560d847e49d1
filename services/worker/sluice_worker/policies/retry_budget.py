"""The retry-budget step: first attempts fill the task's fleet retry budget; a retry must be granted by it.

Outermost but the due time: every first attempt that gets this far is deposited (in batches, see
:mod:`sluice_worker._retry_budgets`), and on the way out a :class:`~sluice_worker.outcome.Retry` the
failure step chose is asked of the budget last, after every other step has had its say; a refused
retry becomes a dead letter (``retry_budget_exhausted``, replayable once the outage is over) and is
counted (``telemetry.budget_refused``). Redis: a round trip per batch of first attempts, one per retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.policy import RetryBudgetPolicy
from sluice.tasks import Task
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker._retry_budgets import RetryBudgets
from sluice_worker.failures import RetryOrDeadLetter
from sluice_worker.outcome import RETRY_BUDGET_EXHAUSTED, FailurePolicy, Outcome, Retry
from sluice_worker.policies.step import Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["RetryBudgetStep"]


class RetryBudgetStep(Step):
    name = "retry budget"
    after_on_ack = False  # it acts on failures only

    def __init__(
        self,
        task: Task,
        policy: RetryBudgetPolicy,
        budgets: RetryBudgets,
        failures: RetryOrDeadLetter,
        telemetry: Telemetry | NullTelemetry,
    ) -> None:
        super().__init__(task)
        self._policy = policy
        self._budgets = budgets
        self._failures = failures
        self._telemetry = telemetry

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> RetryBudgetStep | None:
        p = task.policy.retry_budget
        if p is None:
            return None
        return cls(task, p, policies.budgets, policies.failures, policies.telemetry)

    async def before(self, d: Delivery) -> Outcome | None:
        if d.msg.attempt == 1:
            await self._budgets.first_attempt(self.task, self._policy)
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        if not isinstance(outcome, Retry) or d.error is None:
            return outcome
        if await self._budgets.allow_retry(self.task, self._policy):
            return outcome
        self._telemetry.budget_refused(self._budgets.name(self.task, self._policy))
        return self._failures.give_up(
            self.task, d.msg, d.error, RETRY_BUDGET_EXHAUSTED, "the fleet's retry budget is spent"
        )
