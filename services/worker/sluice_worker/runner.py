"""Running one delivery: decode → find the task → validate the payload → its pipeline → an outcome.

This is the per-message hot path, kept small: header dict access, one ``json.loads``, one pydantic
validation, then the task's :class:`~sluice_worker.policies.pipeline.Pipeline`, built once per task
when the runner is made: its policy steps around the one call path of every handler
(:class:`~sluice_worker.invoke.Invoker`: ``async def`` handlers on the event loop, plain functions in
a bounded thread pool so they never block it). The runner never raises for a bad message or a handler
that fails in any way (any ``BaseException``, a ``CancelledError`` it raised itself included): it
returns an :data:`~sluice_worker.outcome.Outcome`. Only a cancellation of the worker itself propagates.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from pydantic import ValidationError

from sluice.errors import ProtocolError
from sluice.protocol import decode
from sluice.resilience.clock import SYSTEM, Clock
from sluice.settings import Settings
from sluice.tasks import Registry, TaskContext
from sluice_worker.invoke import Invoker
from sluice_worker.outcome import (
    INVALID_PAYLOAD,
    UNKNOWN_TASK,
    DeadLettered,
    DeadLetterOnError,
    FailurePolicy,
    Outcome,
)
from sluice_worker.policies.pipeline import Pipeline
from sluice_worker.policies.shared import Policies, bare_pipeline

__all__ = ["Runner"]


class Runner:
    """Runs deliveries against a :class:`~sluice.tasks.Registry`.

    With ``policies`` (a worker with Redis) every task's pipeline has the steps its policies declare;
    without, only the due time and the failure step. ``clock`` is the worker's one clock (``policies``'
    when given): the consumer, the publishers and the recorder read it from here.
    """

    __slots__ = ("_default_queue", "_max_bytes", "_pipelines", "clock", "registry")

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        pool: Executor,
        policy: FailurePolicy | None = None,
        policies: Policies | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.clock: Clock = clock or (policies.clock if policies is not None else SYSTEM)
        invoke = Invoker(pool)
        failures: FailurePolicy = policy or DeadLetterOnError()
        self._pipelines: dict[str, Pipeline] = {
            name: (
                policies.pipeline(task, failures, invoke)
                if policies is not None
                else bare_pipeline(task, failures, invoke, self.clock)
            )
            for name, task in registry.items()
        }
        self._max_bytes = settings.max_message_bytes
        self._default_queue = settings.default_queue

    def pipeline(self, task: str) -> Pipeline | None:
        """The pipeline of the task named ``task`` (``None``: not in the registry)."""
        return self._pipelines.get(task)

    async def run(
        self,
        body: bytes,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        redelivered: bool = False,
    ) -> Outcome:
        try:
            msg = decode(body, headers, message_id, self._max_bytes, self._default_queue)
        except ProtocolError as e:
            return DeadLettered(e.reason, str(e))
        pipeline = self._pipelines.get(msg.task)
        if pipeline is None:
            return DeadLettered(UNKNOWN_TASK, f"no task named {msg.task!r} in this worker")
        task = pipeline.task
        try:
            model = task.parse(msg.payload)
        except ValidationError as e:
            return DeadLettered(INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {e}")
        except Exception as e:  # a validator of the model raised what pydantic does not wrap (a KeyError...)
            return DeadLettered(
                INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {type(e).__qualname__}: {e}"
            )
        return await pipeline.run(msg, task.arguments(model, TaskContext(msg, redelivered)))
