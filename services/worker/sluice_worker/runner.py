"""Running one delivery: decode → find the task → validate the payload → call the handler → an outcome.

This is the per-message hot path, kept small: header dict access, one ``json.loads``, one pydantic
validation, one call. ``async def`` handlers run on the event loop; plain functions run in a bounded thread
pool so they never block it. The runner never raises for a bad message or a failing handler: it returns an
:class:`~sluice_worker.outcome.Outcome`. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from pydantic import ValidationError

from sluice.errors import ProtocolError, UnknownTask
from sluice.protocol import decode
from sluice.settings import Settings
from sluice.tasks import Registry, Task, TaskContext
from sluice_worker.gate import PolicyGate
from sluice_worker.outcome import ACK, INVALID_PAYLOAD, DeadLetter, DeadLetterOnError, FailurePolicy, Outcome

__all__ = ["Runner"]


class Runner:
    """Runs deliveries against a :class:`~sluice.tasks.Registry`."""

    __slots__ = ("_default_queue", "_gate", "_max_bytes", "_policy", "_pool", "_tasks", "registry")

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
        self._pool = pool
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
        args = task.arguments(model, TaskContext(msg, redelivered))
        gate = self._gate
        if gate is not None and (msg.eta_ms is not None or await gate.applies(task)):
            return await gate.run(task, msg, lambda: self._call(task, args), self._policy)
        try:
            if task.is_async:
                await task.fn(*args)
            else:
                await asyncio.get_running_loop().run_in_executor(self._pool, task.fn, *args)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is None or me.cancelling():
                raise  # we are being cancelled (drain, lost connection): the delivery goes back
            # the handler raised CancelledError on its own: a failure like any other
            return self._policy.on_error(task, msg, RuntimeError("the handler raised CancelledError"))
        except Exception as e:
            return self._policy.on_error(task, msg, e)
        return ACK

    async def _call(self, task: Task, args: list[Any]) -> None:
        if task.is_async:
            await task.fn(*args)
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, task.fn, *args)
