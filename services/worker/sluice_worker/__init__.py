"""sluice's worker service: consume task queues, run handlers, dead-letter what cannot run.

``sluice worker`` (or ``python -m sluice_worker``) is the command; :func:`serve` runs a worker inside an
existing event loop (tests, embedding). Names are imported on first use, so ``sluice --help`` (which
imports ``sluice_worker.cli``) does not load the AMQP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.lazy import lazy_names

if TYPE_CHECKING:
    from sluice_worker.failures import RetryOrDeadLetter, TaskTimeout
    from sluice_worker.lifecycle import Shutdown, run, serve
    from sluice_worker.options import apply_options, load_registry, resolve_queues
    from sluice_worker.outcome import (
        ACK,
        Ack,
        Cancelled,
        DeadLettered,
        DeadLetterOnError,
        Deferred,
        FailurePolicy,
        Outcome,
        Retry,
        Skipped,
    )
    from sluice_worker.policies import Pipeline, Policies

__all__ = [
    "ACK",
    "Ack",
    "Cancelled",
    "DeadLetterOnError",
    "DeadLettered",
    "Deferred",
    "FailurePolicy",
    "Outcome",
    "Pipeline",
    "Policies",
    "Retry",
    "RetryOrDeadLetter",
    "Shutdown",
    "Skipped",
    "TaskTimeout",
    "apply_options",
    "load_registry",
    "resolve_queues",
    "run",
    "serve",
]

_WHERE = {
    "Shutdown": "lifecycle",
    "Pipeline": "policies",
    "Policies": "policies",
    "RetryOrDeadLetter": "failures",
    "TaskTimeout": "failures",
    "run": "lifecycle",
    "serve": "lifecycle",
    "apply_options": "options",
    "load_registry": "options",
    "resolve_queues": "options",
    "ACK": "outcome",
    "Ack": "outcome",
    "Cancelled": "outcome",
    "DeadLettered": "outcome",
    "DeadLetterOnError": "outcome",
    "Deferred": "outcome",
    "FailurePolicy": "outcome",
    "Outcome": "outcome",
    "Retry": "outcome",
    "Skipped": "outcome",
}


__getattr__ = lazy_names("sluice_worker", _WHERE)
