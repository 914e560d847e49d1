"""Running one delivery: decode → find the task → validate the payload → its pipeline → an outcome.

This is the per-message hot path, kept small: header dict access, one ``json.loads``, one pydantic
validation, then the task's :class:`~sluice_worker.policies.pipeline.Pipeline`, built once per task
when the runner is made: its policy steps around the one call path of every handler
(:class:`~sluice_worker.invoke.Invoker`: ``async def`` handlers on the event loop, plain functions in
a bounded thread pool so they never block it). The runner never raises for a bad message or a handler
that fails in any way (any ``BaseException``, a ``CancelledError`` it raised itself included): it
returns an :data:`~sluice_worker.outcome.Outcome`. Only a cancellation of the worker itself propagates.

A delivery that asks for tracking (``x-sluice-track``, or a unique key to release) of a task that does
not declare it goes through the task's *tracked* pipeline (built on the first such delivery); any other
delivery of an untracked task costs a header lookup, no step, no Redis call
(:mod:`~sluice_worker.policies.track`). With a cancel watch, each handler's ``TaskContext.cancelled``
is a lookup in it (:mod:`~sluice_worker.policies.cancel`).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from pydantic import ValidationError

from sluice.errors import ProtocolError
from sluice.protocol import H_TRACK, H_UNIQUE_KEY, decode
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
from sluice_worker.policies.track import dead_on_arrival

__all__ = ["Runner"]


class Runner:
    """Runs deliveries against a :class:`~sluice.tasks.Registry`.

    With ``policies`` (a worker with Redis) every task's pipeline has the steps its policies declare;
    without, only the due time and the failure step. ``clock`` is the worker's one clock (``policies``'
    when given): the consumer, the publishers and the recorder read it from here.
    """

    __slots__ = (
        "_default_queue",
        "_failures",
        "_invoke",
        "_max_bytes",
        "_pipelines",
        "_policies",
        "_tracked",
        "_watch",
        "clock",
        "registry",
    )

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
        invoke = self._invoke = Invoker(pool)
        failures: FailurePolicy = policy or DeadLetterOnError()
        self._failures = failures
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
        # task handles: the tracked pipelines of tasks that do not declare tracking (built on demand),
        # and the cancel watch behind ctx.cancelled
        self._policies = policies if policies is not None and policies.tracker is not None else None
        self._tracked: dict[str, Pipeline] = {}
        canceller = policies.canceller if policies is not None else None
        self._watch = canceller.watch if canceller is not None else None

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
            return await self._refused(DeadLettered(e.reason, str(e)), headers, message_id)
        pipeline = self._pipelines.get(msg.task)
        if pipeline is None:
            dead = DeadLettered(UNKNOWN_TASK, f"no task named {msg.task!r} in this worker")
            return await self._refused(dead, headers, msg.id)
        task = pipeline.task
        try:
            model = task.parse(msg.payload)
        except ValidationError as e:
            dead = DeadLettered(INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {e}")
            return await self._refused(dead, headers, msg.id, pipeline.tracked)
        except Exception as e:  # a validator of the model raised what pydantic does not wrap (a KeyError...)
            dead = DeadLettered(
                INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {type(e).__qualname__}: {e}"
            )
            return await self._refused(dead, headers, msg.id, pipeline.tracked)
        if (
            self._policies is not None
            and headers
            and not pipeline.tracked
            and (headers.get(H_TRACK) or headers.get(H_UNIQUE_KEY))
        ):
            pipeline = self._tracked_pipeline(pipeline)  # the publisher asked for this delivery's state
        w = self._watch
        if w is None or "context" not in task._params:  # no handler to ask ctx.cancelled: no closure
            ctx = TaskContext(msg, redelivered)
        else:
            ctx = TaskContext(msg, redelivered, lambda: w.is_cancelled(msg.id, msg.task, msg.created_at_ms))
        return await pipeline.run(msg, task.arguments(model, ctx), headers)

    async def _refused(
        self,
        dead: DeadLettered,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        tracked: bool = False,
    ) -> DeadLettered:
        """A message that cannot run at all: dead-lettered; if it is tracked, its record says ``dead``."""
        p = self._policies
        asked = tracked or (headers and (headers.get(H_TRACK) or headers.get(H_UNIQUE_KEY)))
        if p is not None and p.tracker is not None and message_id and asked:
            await dead_on_arrival(p.tracker, message_id, headers, dead)
        return dead

    def _tracked_pipeline(self, plain: Pipeline) -> Pipeline:
        """``plain``'s task's pipeline with the tracking steps (built once, on first use)."""
        name = plain.task.name
        got = self._tracked.get(name)
        if got is None:
            assert self._policies is not None
            got = self._tracked[name] = self._policies.pipeline(
                plain.task, self._failures, self._invoke, tracked=True
            )
        return got
