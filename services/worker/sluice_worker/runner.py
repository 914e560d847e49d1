"""Running one delivery: decode → find the task → validate the payload → call the handler → an outcome.

This is the per-message hot path, kept small: header dict access, one ``json.loads``, one pydantic
validation, one call. ``async def`` handlers run on the event loop; plain functions run in a bounded thread
pool so they never block it; both through the one call path of :class:`~sluice_worker.invoke.Invoker`,
whether the task has policies (the :class:`~sluice_worker.gate.PolicyGate` around the call) or not. The
runner never raises for a bad message or a handler that fails in any way (any ``BaseException``, a
``CancelledError`` it raised itself included): it returns an :class:`~sluice_worker.outcome.Outcome`.
Only a cancellation of the worker itself propagates.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from pydantic import ValidationError

from sluice.errors import ProtocolError, UnknownTask
from sluice.protocol import decode
from sluice.settings import Settings
from sluice.tasks import Registry, TaskContext
from sluice_worker.gate import PolicyGate
from sluice_worker.invoke import Invoker
from sluice_worker.outcome import ACK, INVALID_PAYLOAD, DeadLetter, DeadLetterOnError, FailurePolicy, Outcome

__all__ = ["Runner"]


class Runner:
    """Runs deliveries against a :class:`~sluice.tasks.Registry`."""

    __slots__ = ("_default_queue", "_gate", "_invoke", "_max_bytes", "_policy", "_tasks", "registry")

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        pool: Executor,
        policy: FailurePolicy | None = None,
        gate: PolicyGate | None = None,
    ) -> None:
        self.registry = registry
        self._tasks = dict(registry.items())
        self._invoke = Invoker(pool)
        self._policy: FailurePolicy = policy or DeadLetterOnError()
        self._max_bytes = settings.max_message_bytes
        self._default_queue = settings.default_queue
        self._gate = gate

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
            return DeadLetter(e.reason, str(e))
        task = self._tasks.get(msg.task)
        if task is None:
            return DeadLetter(UnknownTask.reason, f"no task named {msg.task!r} in this worker")
        try:
            model = task.parse(msg.payload)
        except ValidationError as e:
            return DeadLetter(INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {e}")
        except Exception as e:  # a validator of the model raised what pydantic does not wrap (a KeyError...)
            return DeadLetter(
                INVALID_PAYLOAD, f"payload of {msg.task!r} is invalid: {type(e).__qualname__}: {e}"
            )
        args = task.arguments(model, TaskContext(msg, redelivered))
        gate = self._gate
        if gate is not None and (msg.eta_ms is not None or await gate.applies(task)):
            return await gate.run(task, msg, lambda: self._invoke(task, args), self._policy)
        error = await self._invoke(task, args)  # the same call the gate makes
        return ACK if error is None else self._policy.on_error(task, msg, error)
