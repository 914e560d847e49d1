"""The fleet retry budget in the worker: first attempts deposited in small batches, retries asked for.

A task declaring ``retry_budget`` deposits each first attempt; the deposits of one budget are sent
together, every ``FLUSH_EVERY`` attempts or ``FLUSH_AFTER`` seconds (and always right before a retry
is asked for), so a healthy task costs a round trip per batch, not per run. A retry the budget refuses
becomes a dead letter (:data:`~sluice_worker.outcome.RETRY_BUDGET_EXHAUSTED`), replayable once the outage is over.

The budgets fail open with a local limit (:class:`~sluice.resilience.FailOpen`): without Redis a
worker still retries, at its share of ``min_per_second``, rather than dead-lettering every failure.
"""

from __future__ import annotations

from collections import Counter

from sluice.policy import RetryBudgetPolicy
from sluice.resilience import FailOpen, RetryBudget
from sluice.resilience.clock import SYSTEM, Clock
from sluice.tasks import Task
from sluice_worker._resilience_cache import ResilienceCache

__all__ = ["RetryBudgets"]

FLUSH_EVERY = 32
FLUSH_AFTER = 0.5


class RetryBudgets:
    """The retry budgets of one worker process: batched deposits, a grant per retry."""

    def __init__(self, cache: ResilienceCache, *, clock: Clock = SYSTEM) -> None:
        self._cache = cache
        self._clock = clock.monotonic
        self._pending: Counter[str] = Counter()
        self._flushed: dict[str, float] = {}

    @staticmethod
    def name(task: Task, policy: RetryBudgetPolicy) -> str:
        return policy.name or task.name

    def _budget(self, name: str, policy: RetryBudgetPolicy) -> RetryBudget:
        return self._cache.budget(name, policy, FailOpen())

    async def first_attempt(self, task: Task, policy: RetryBudgetPolicy) -> None:
        """Count one first attempt of ``task``; sends the batch when it is due."""
        name = self.name(task, policy)
        self._pending[name] += 1
        now = self._clock()
        if self._pending[name] >= FLUSH_EVERY or now - self._flushed.setdefault(name, now) >= FLUSH_AFTER:
            await self._flush(name, policy)

    async def allow_retry(self, task: Task, policy: RetryBudgetPolicy) -> bool:
        """May ``task`` retry? Its pending deposits go first, so the budget sees every call."""
        name = self.name(task, policy)
        await self._flush(name, policy)
        return await self._budget(name, policy).try_retry()

    async def _flush(self, name: str, policy: RetryBudgetPolicy) -> None:
        n = self._pending.pop(name, 0)
        self._flushed[name] = self._clock()
        if n:
            await self._budget(name, policy).record_call(n)  # never raises for Redis trouble
