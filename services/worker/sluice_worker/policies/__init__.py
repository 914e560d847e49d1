"""The worker's task policies as a pipeline of steps, one module per step, built once per task.

:mod:`~sluice_worker.policies.pipeline` says in which order and why; each step's module says what it
decides and what it costs. :class:`Policies` holds what the steps of one worker share and builds the
pipelines. The cancel steps (:mod:`~sluice_worker.policies.cancel`) are in every pipeline of a worker with
a cancel view; the tracking steps (:mod:`~sluice_worker.policies.track`) only in tracked pipelines.
"""

from __future__ import annotations

from sluice_worker.policies.breaker import BreakerStep
from sluice_worker.policies.cancel import Canceller, CancelStep, CancelView, HandlerWatch
from sluice_worker.policies.concurrency import ConcurrencyStep
from sluice_worker.policies.eta import Eta, due
from sluice_worker.policies.failure import Failure
from sluice_worker.policies.idempotency import IdempotencyStep
from sluice_worker.policies.pipeline import ORDER, Pipeline
from sluice_worker.policies.rate_limit import RateLimitStep, batch_size
from sluice_worker.policies.retry_budget import RetryBudgetStep
from sluice_worker.policies.shared import Policies, bare_pipeline, redis_for
from sluice_worker.policies.step import BACKEND_RETRY, Delivery, Step, backend_down
from sluice_worker.policies.timeout import within
from sluice_worker.policies.track import TrackStart, TrackStep

__all__ = [
    "BACKEND_RETRY",
    "ORDER",
    "BreakerStep",
    "CancelStep",
    "CancelView",
    "Canceller",
    "ConcurrencyStep",
    "Delivery",
    "Eta",
    "Failure",
    "HandlerWatch",
    "IdempotencyStep",
    "Pipeline",
    "Policies",
    "RateLimitStep",
    "RetryBudgetStep",
    "Step",
    "TrackStart",
    "TrackStep",
    "backend_down",
    "bare_pipeline",
    "batch_size",
    "due",
    "redis_for",
    "within",
]
