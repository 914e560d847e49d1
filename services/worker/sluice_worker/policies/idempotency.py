"""The idempotency step: a key already done is skipped, one claimed elsewhere deferred, else claimed.

After the due time and the rate limit (a deferred task must not hold a claim while it waits) and
before the concurrency lease and the breaker (a duplicate must not take a slot or a breaker trial).
A task whose key is done is acked and skipped (:data:`~sluice_worker.outcome.DEDUPLICATED`); one
claimed by a running worker is deferred until that claim's lease ends (``in_progress``). On the way
out the claim is completed when the task ran fine, released otherwise (a failure, a deferral further
in, a cancellation), so the next delivery runs it. Redis: one round trip to claim (coalesced), one to
complete or release.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sluice.policy import Idempotency
from sluice.resilience import BackendUnavailable, Claimed, ClaimLost, Done, IdempotencyStore
from sluice.tasks import Task
from sluice_worker.outcome import ACK, DEDUPLICATED, IN_PROGRESS, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import Delivery, Step, backend_down

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["IdempotencyStep"]

log = logging.getLogger("sluice.worker")


class IdempotencyStep(Step):
    name = "idempotency"

    def __init__(self, task: Task, policy: Idempotency, store: IdempotencyStore) -> None:
        super().__init__(task)
        self._policy = policy
        self._store = store

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> IdempotencyStep | None:
        p = task.policy.idempotency
        if p is None:
            return None
        return cls(task, p, policies.cache.store(p.lease, p.ttl))

    async def before(self, d: Delivery) -> Outcome | None:
        key = self._policy.key_for(d.msg)
        if key is None:
            return None
        name = f"{self.task.name}:{key}"
        try:
            got = await self._store.claim(name)
        except BackendUnavailable as e:
            return backend_down(self.task, e)
        if isinstance(got, Done):
            log.info("skipped task %s (%s): idempotency key %r already done", d.msg.id, self.task.name, key)
            return DEDUPLICATED
        if not isinstance(got, Claimed):
            return Deferred(IN_PROGRESS, got.retry_after)
        d.hold(self, (name, got.token))
        return None

    async def after(self, d: Delivery, outcome: Outcome | None) -> Outcome | None:
        claim: tuple[str, str] | None = d.held(self)
        if claim is not None:
            await self._finish(claim, done=outcome is ACK)
        return outcome

    async def _finish(self, claim: tuple[str, str], *, done: bool) -> None:
        """Complete (the effect happened) or release (it failed) a claim; never raises for Redis."""
        name, token = claim
        try:
            await (self._store.complete(name, token) if done else self._store.release(name, token))
        except (ClaimLost, BackendUnavailable) as e:
            what = "completed (a redelivery would run again)" if done else "released (it will expire)"
            log.warning("idempotency claim %s not %s: %s", name, what, e)
