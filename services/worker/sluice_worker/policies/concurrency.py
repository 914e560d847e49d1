"""The concurrency step: a fleet-wide lease per task (per payload key), renewed while the handler runs.

After the idempotency claim (a duplicate takes no slot) and before the breaker (a task waiting for a
slot takes no breaker trial). No slot free within ``in_place`` seconds: deferred (``concurrency``, no
attempt spent). The lease is given back on the way out, whatever happened further in. Redis: one
round trip to acquire (more while it polls for a slot), one heartbeat per lease period, one to release.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from sluice.policy import Concurrency, payload_field
from sluice.resilience import BackendUnavailable, ConcurrencyLimited, ConcurrencyLimiter, Lease
from sluice.tasks import Task
from sluice_worker.outcome import CONCURRENCY, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import BACKEND_RETRY, Delivery, Step, backend_down

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["ConcurrencyStep"]


class ConcurrencyStep(Step):
    name = "concurrency"

    def __init__(self, task: Task, policy: Concurrency, sem: ConcurrencyLimiter, max_wait: float) -> None:
        super().__init__(task)
        self._policy = policy
        self._sem = sem
        self._max_wait = max_wait

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> ConcurrencyStep | None:
        p = task.policy.concurrency
        if p is None:
            return None
        return cls(task, p, policies.cache.sem(task.name, p), policies.in_place)

    async def before(self, d: Delivery) -> Outcome | None:
        key = self._policy.key
        part = payload_field(d.msg.payload, key) if key else None
        name = self.task.name if part is None else f"{self.task.name}:{part}"
        lease = self._sem.acquire(name, max_wait=self._max_wait)
        try:
            await lease.__aenter__()
        except ConcurrencyLimited:
            return Deferred(CONCURRENCY, BACKEND_RETRY)
        except BackendUnavailable as e:
            return backend_down(self.task, e)
        d.hold(self, lease)
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        lease: AbstractAsyncContextManager[Lease] | None = d.held(self)
        if lease is not None:
            await lease.__aexit__(None, None, None)
        return outcome
