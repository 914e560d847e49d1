"""What the policy steps of every task share in one worker process, and where their pipelines are built.

One :class:`Policies` per worker: one Redis client (or any backend of :mod:`sluice.resilience`), the
deployment's key space, the run-time limit overrides (:class:`~sluice.limits.LimitStore`), the cache of
resilience objects, the fleet retry budgets, the failure policy, the telemetry, the task handles' write
path (:class:`~sluice.handles.Tracker`) and cancels (:class:`~sluice_worker.policies.cancel.Canceller`
over the :class:`~sluice.handles.CancelWatch`), and the one :class:`~sluice.resilience.clock.Clock` of
the worker. :meth:`Policies.pipeline` builds a task's :class:`~sluice_worker.policies.pipeline.Pipeline`
from its ``TaskPolicy``, once, when the registry loads (and its tracked pipeline, with the tracking
steps, when the task is tracked or on the first delivery that asks for tracking).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.handles import Tracker
from sluice.limits import LimitStore
from sluice.redis_client import AnyRedis, redis_client
from sluice.resilience import Backend, KeySpace
from sluice.resilience.clock import SYSTEM, Clock
from sluice.settings import Settings
from sluice.tasks import Task
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker._resilience_cache import ResilienceCache
from sluice_worker._retry_budgets import RetryBudgets
from sluice_worker.failures import RetryOrDeadLetter
from sluice_worker.outcome import FailurePolicy
from sluice_worker.policies.cancel import Canceller
from sluice_worker.policies.eta import Eta
from sluice_worker.policies.failure import Failure
from sluice_worker.policies.pipeline import ORDER, Pipeline
from sluice_worker.policies.rate_limit import IN_PLACE

if TYPE_CHECKING:
    from sluice_worker.invoke import Invoker

__all__ = ["Policies", "bare_pipeline", "redis_for"]


def redis_for(settings: Settings) -> AnyRedis:
    """The worker's Redis client: enough connections for every slot and its lease heartbeat, so a busy
    worker never fails a policy decision for want of a connection (the pool would raise, not wait)."""
    return redis_client(
        settings,
        max_connections=2 * settings.concurrency + 16,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
    )


class Policies:
    """The task policies of one worker process, over one Redis client (the caller's to close)."""

    def __init__(
        self,
        redis: Backend,
        prefix: str,
        *,
        limits: LimitStore | None = None,
        failures: RetryOrDeadLetter | None = None,
        in_place: float = IN_PLACE,
        telemetry: Telemetry | NullTelemetry | None = None,
        clock: Clock = SYSTEM,
        tracker: Tracker | None = None,
        canceller: Canceller | None = None,
        track_all: bool = False,
    ) -> None:
        self.redis = redis
        self.keys = KeySpace(prefix)
        self.clock = clock
        # the overrides are read with a Redis command the in-memory backend does not have: a test on it
        # passes its own store
        self.limits = limits or LimitStore(redis, prefix, clock=clock.monotonic)  # type: ignore[arg-type]
        self.failures = failures or RetryOrDeadLetter(clock=clock)
        # rate-limit decisions and refused retries (the metrics service's sluice_rate_limit_* and
        # sluice_retry_budget_refusals_total); the outcome of each delivery is the consumer's to count
        self.telemetry = telemetry or NullTelemetry()
        self.in_place = in_place
        self.cache = ResilienceCache(redis, self.keys, clock=clock)
        self.budgets = RetryBudgets(self.cache, clock=clock)
        # task handles (none without Redis): the state writes of tracked tasks, the live cancels
        self.tracker = tracker
        self.canceller = canceller
        self.track_all = track_all

    def tracks(self, task: Task) -> bool:
        """Is every delivery of ``task`` tracked (it declares ``track``/``result``, or track_all)?"""
        p = task.policy
        return self.tracker is not None and (self.track_all or p.track or p.result is not None)

    def pipeline(
        self, task: Task, failures: FailurePolicy, invoke: Invoker, *, tracked: bool | None = None
    ) -> Pipeline:
        """``task``'s pipeline: the steps of :data:`~sluice_worker.policies.pipeline.ORDER` it needs;
        the tracking steps when ``tracked`` (``None``: when :meth:`tracks` says so)."""
        track = self.tracks(task) if tracked is None else tracked and self.tracker is not None
        steps = [
            step
            for kind in ORDER
            if (track or not kind.tracking) and (step := kind.build(task, self, failures)) is not None
        ]
        return Pipeline(task, steps, invoke)

    async def aclose(self) -> None:
        """Wait for the rate-limit decisions still on the wire (the Redis client is the caller's)."""
        await self.cache.aclose()


def bare_pipeline(task: Task, failures: FailurePolicy, invoke: Invoker, clock: Clock = SYSTEM) -> Pipeline:
    """The pipeline of a worker without Redis (no task policies): the due time and the failure step."""
    return Pipeline(task, [Eta(task, clock), Failure(task, failures)], invoke)
