"""The breaker step: an open breaker defers the task by its remaining open time; the outcome is recorded.

Last before the handler, so only a task that will run takes a permit (a half-open breaker's trials
are few). An open breaker defers the task (``breaker_open``, no attempt spent), so the worker stops
running that task's work while it is open; half-open trials follow the breaker's permits. On the way
out, once the handler answered, its success or failure (as the breaker's policy counts it) is
recorded; a task cancelled by the worker records nothing, and neither does a ``Throttled`` (the upstream
answered and asked for less: the rate-limit step freezes the key; a burst of 429s must not open the
breaker, nor a throttled half-open trial close it). Redis: one round trip to allow (none while
the open state is cached), one to record.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sluice.resilience import BackendUnavailable, CircuitBreaker, CircuitOpen, Permit
from sluice.tasks import Task
from sluice.throttle import Throttled
from sluice_worker.outcome import BREAKER_OPEN, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import Delivery, Step, backend_down

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["BreakerStep"]

log = logging.getLogger("sluice.worker")


class BreakerStep(Step):
    name = "breaker"

    def __init__(self, task: Task, breaker: CircuitBreaker) -> None:
        super().__init__(task)
        self.breaker = breaker

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> BreakerStep | None:
        p = task.policy.breaker
        if p is None:
            return None
        return cls(task, policies.cache.breaker(p.name, p.policy))

    async def before(self, d: Delivery) -> Outcome | None:
        try:
            d.hold(self, await self.breaker.allow())
        except CircuitOpen as e:
            return Deferred(BREAKER_OPEN, e.retry_after)
        except BackendUnavailable as e:
            return backend_down(self.task, e)
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        permit: Permit | None = d.held(self)
        if permit is not None and d.called:
            error = d.error
            if isinstance(error, Throttled):  # the upstream answered, asking for less: the freeze's job
                return outcome
            success = error is None or not self.breaker.policy.counts_as_failure(error)
            try:
                await self.breaker.record(permit, success)
            except BackendUnavailable as e:  # the outcome is lost, the task's outcome is not
                log.warning("breaker %s: outcome not recorded: %s", self.breaker.name, e)
        return outcome
