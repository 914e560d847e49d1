"""Test your tasks with the real runner and policy pipeline, in milliseconds: no RabbitMQ, no Redis.

:class:`TestWorker` runs deliveries through the worker's own :class:`~sluice_worker.runner.Runner` and
each task's policy pipeline (:mod:`sluice_worker.policies`: eta, retry budget, rate limit, idempotency,
concurrency, breaker, timeout, failure), on an in-memory broker, a
:class:`~sluice.resilience.clock.FakeClock` and the in-memory resilience backend
(:class:`~sluice.resilience.memory.MemoryBackend`, whose reference models are checked against the Redis
scripts). Each outcome is carried out as the worker's session does: retries and deferrals come back
when their delay tier would return them, on the fake clock; dead letters are kept with their headers.
:meth:`TestWorker.join` runs until nothing is left, so a retry with a 30 s backoff takes no real time::

    async with TestWorker([charge]) as w:
        task_id = w.enqueue("billing.charge", {"customer": "c1", "cents": 500})
        await w.join()
        assert w.history(task_id).kinds == ["retried", "acked"]

docs/testing.md is the guide: what is simulated and what is not. Import it explicitly (``import
sluice.testing``): neither ``sluice`` nor the worker loads it.
"""

from sluice.deadletters import DeadLetter
from sluice.resilience.clock import FakeClock
from sluice.resilience.memory import MemoryBackend
from sluice.testing._broker import Message
from sluice.testing._cancels import MemoryCancels
from sluice.testing._harness import MAX_DELIVERIES, MAX_TIME, StillBusy, TestWorker
from sluice.testing._records import (
    ACKED,
    CANCELLED,
    DEAD_LETTERED,
    DEFERRED,
    RETRIED,
    SKIPPED,
    DeliveryRecord,
    TaskHistory,
)

__all__ = [
    "ACKED",
    "CANCELLED",
    "DEAD_LETTERED",
    "DEFERRED",
    "MAX_DELIVERIES",
    "MAX_TIME",
    "RETRIED",
    "SKIPPED",
    "DeadLetter",
    "DeliveryRecord",
    "FakeClock",
    "MemoryBackend",
    "MemoryCancels",
    "Message",
    "StillBusy",
    "TaskHistory",
    "TestWorker",
]
