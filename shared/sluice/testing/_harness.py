"""The test harness: the real runner and policy pipeline over an in-memory broker, a fake clock and the
in-memory resilience backend (see :mod:`sluice.testing`)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType, TracebackType
from typing import Any, Self

from pydantic import BaseModel

from sluice.deadletters import DeadLetter
from sluice.errors import ConfigError, SluiceError
from sluice.limits import LimitStore
from sluice.protocol import TaskMessage, encode_body
from sluice.resilience import RandomSource
from sluice.resilience.clock import FakeClock
from sluice.resilience.memory import MemoryBackend
from sluice.settings import Settings
from sluice.tasks import Registry, Task
from sluice.testing._broker import InMemoryBroker, Message, properties_of
from sluice.testing._cancels import MemoryCancels
from sluice.testing._delivery import deliver
from sluice.testing._records import DeliveryRecord, TaskHistory
from sluice.testing._simulation import SimClock, until_one_done
from sluice.topology import Topology, next_hop
from sluice_worker._wall import wall_ms
from sluice_worker.failures import RetryOrDeadLetter
from sluice_worker.outcome import FailurePolicy
from sluice_worker.policies import Policies
from sluice_worker.runner import Runner

__all__ = ["MAX_DELIVERIES", "MAX_TIME", "StillBusy", "TestWorker"]

MAX_DELIVERIES = 10_000  # deliveries one join() runs at most
MAX_TIME = 30 * 86_400.0  # simulated seconds one join() may move the clock at most (30 days)


class StillBusy(SluiceError):
    """:meth:`TestWorker.join` reached its bound (deliveries or simulated time) with work left: a task
    that retries or defers forever, or a bound too small for the test."""


def _registry(tasks: Registry | Iterable[Task | ModuleType]) -> Registry:
    if isinstance(tasks, Registry):
        return tasks
    reg = Registry()
    for t in tasks:
        if isinstance(t, ModuleType):
            reg.add_module(t)
        else:
            reg.add(t)
    return reg


class TestWorker:
    """A sluice worker in this process, in simulated time (an async context manager, see the module doc).

    ``tasks``: a :class:`~sluice.tasks.Registry`, or tasks and modules of tasks. ``clock``: the fake
    clock (a new one by default); ``backend``: the in-memory resilience backend on that clock (limits,
    breakers, leases and claims; a new one by default); ``settings``: the worker's (prefix, size cap,
    default queue, thread pool size); ``failures``: the failure policy (the worker's
    :class:`~sluice_worker.failures.RetryOrDeadLetter` by default, with ``rng`` for the backoff's
    jitter: seeded, so delays are the same on every run); ``concurrency``: deliveries run at once
    (1: one after another, in due order, the most deterministic).
    """

    __test__ = False  # not a pytest test class, whatever the name says

    def __init__(
        self,
        tasks: Registry | Iterable[Task | ModuleType],
        *,
        clock: FakeClock | None = None,
        backend: MemoryBackend | None = None,
        settings: Settings | None = None,
        failures: FailurePolicy | None = None,
        rng: RandomSource | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        self.registry = _registry(tasks)
        self.fake = clock if clock is not None else FakeClock()
        self.backend = backend if backend is not None else MemoryBackend(clock=self.fake)
        if self.backend.clock is not self.fake:
            raise ConfigError("the backend must be on the harness's clock: MemoryBackend(clock=clock)")
        self.settings = settings if settings is not None else Settings()
        self.topology = Topology.from_settings(self.settings)
        self.clock = SimClock(self.fake)
        self.concurrency = concurrency
        #: run-time rate-limit overrides, as ``sluice limits set`` writes them (read every 2 s)
        self.limits = LimitStore.in_memory(self.backend, self.settings.prefix, clock=self.clock.monotonic)
        #: the live cancels (:meth:`cancel`), as a worker's cancel watch holds them
        self.cancels = MemoryCancels()
        self.policies = Policies(
            self.backend,
            self.settings.prefix,
            limits=self.limits,
            failures=RetryOrDeadLetter(rng if rng is not None else random.Random(0), clock=self.clock),
            clock=self.clock,
            canceller=self.cancels.canceller,
        )
        self._failures = failures
        self.broker = InMemoryBroker()
        self.deliveries: list[DeliveryRecord] = []
        self.dead_letters: list[DeadLetter] = []
        self._start = self.fake.monotonic()
        self._pool: ThreadPoolExecutor | None = None
        self._runner: Runner | None = None

    # ---- lifetime
    async def __aenter__(self) -> Self:
        self._pool = ThreadPoolExecutor(self.settings.sync_threads, thread_name_prefix="sluice-test-sync")
        failures = self._failures or self.policies.failures
        self._runner = Runner(
            self.registry, self.settings, self._pool, failures, self.policies, clock=self.clock
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.policies.aclose()
        if self._pool is not None:  # as the worker: a sync handler still running is not waited for
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- publishing
    def enqueue(
        self,
        task: str | Task,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        queue: str | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        trace_id: str | None = None,
        task_id: str | None = None,
    ) -> str:
        """Publish a task as ``sluice publish`` would (``delay``: seconds, through the delay tiers);
        answers its task id. The queue is the task's own when the registry knows it."""
        name = task.name if isinstance(task, Task) else task
        body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else dict(payload or {})
        known = self.registry.get(name)
        now = wall_ms(self.clock)
        extra: dict[str, Any] = {} if task_id is None else {"id": task_id}
        msg = TaskMessage(
            name,
            body,
            queue=queue or (known.queue if known is not None else self.settings.default_queue),
            created_at_ms=now,
            idempotency_key=idempotency_key,
            trace_id=trace_id,
            eta_ms=None if delay is None else now + round(delay * 1000),
            **extra,
        )
        return self.publish(msg)

    def publish(self, msg: TaskMessage) -> str:
        """Publish a :class:`~sluice.protocol.TaskMessage` as :meth:`sluice.Publisher.publish` does:
        the body encoded and size-checked, its headers, to a delay tier when its eta is ahead."""
        body = encode_body(msg.payload, self.settings.max_message_bytes)
        due = self.fake.monotonic()
        if msg.eta_ms is not None:
            tier = next_hop(msg.eta_ms - wall_ms(self.clock))
            if tier is not None:
                due += tier / 1000
        self.broker.put(Message(body, properties_of(msg.id, msg.headers()), msg.queue, due))
        return msg.id

    def publish_raw(
        self,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> None:
        """Put any message on a work queue, as a foreign producer might (not JSON, headers missing...)."""
        q = queue or self.settings.default_queue
        self.broker.put(Message(body, properties_of(message_id, headers), q, self.fake.monotonic()))

    def cancel(self, *task_ids: str) -> None:
        """As ``sluice task cancel ID...`` (a batch by name: ``w.cancels.cancel_batch(task, before_ms)``)."""
        for task_id in task_ids:
            self.cancels.cancel(task_id)

    # ---- running
    async def join(self, *, max_deliveries: int = MAX_DELIVERIES, max_time: float = MAX_TIME) -> None:
        """Run every delivery, retry and deferral until nothing is left (no message in any queue or
        delay tier, none running), moving the fake clock to the next due time whenever nothing is due.
        Raises :class:`StillBusy` after ``max_deliveries`` deliveries or ``max_time`` simulated
        seconds with work left."""
        await self._drive(self.fake.monotonic() + max_time, max_deliveries, f"{max_time:g} simulated seconds")

    #: :meth:`join` by the name arq and others give it
    run_until_idle = join

    async def advance(self, seconds: float, *, max_deliveries: int = MAX_DELIVERIES) -> None:
        """Move the clock ``seconds`` ahead, running on the way what comes due, and stop there (what is
        due later stays queued)."""
        until = self.fake.monotonic() + seconds
        await self._drive(until, max_deliveries, None)
        self.fake.advance(max(0.0, until - self.fake.monotonic()))
        await asyncio.sleep(0)

    async def run(
        self, task: str | Task, payload: Mapping[str, Any] | BaseModel | None = None, **options: Any
    ) -> TaskHistory:
        """:meth:`enqueue` one task (``options``: those of :meth:`enqueue`), :meth:`join`, and answer
        that task's history."""
        task_id = self.enqueue(task, payload, **options)
        await self.join()
        return self.history(task_id)

    async def _drive(self, until: float, max_deliveries: int, bound: str | None) -> None:
        """Deliver what is due, moving the clock, until nothing is left (``bound`` names the time bound:
        past ``until`` with work left is :class:`StillBusy`) or, with ``bound=None``, until ``until``."""
        runner = self._runner
        if runner is None:
            raise ConfigError("use the TestWorker as an async context manager: async with TestWorker(...)")
        started = len(self.deliveries)
        running: set[asyncio.Task[None]] = set()

        def check_time() -> None:
            if bound is not None and self.fake.monotonic() > until:
                raise StillBusy(self._busy(bound))

        try:
            while True:
                while len(running) < self.concurrency:
                    m = self.broker.take_due(self.fake.monotonic())
                    if m is None:
                        break
                    if len(self.deliveries) + len(running) - started >= max_deliveries:
                        self.broker.put(m)
                        raise StillBusy(self._busy(f"{max_deliveries} deliveries"))
                    running.add(asyncio.create_task(self._deliver(runner, m)))
                if running:
                    for t in await until_one_done(self.clock, running, check_time):
                        running.discard(t)
                        t.result()  # an error of the harness itself
                    continue
                due = self.broker.next_due()
                if due is None:
                    return
                if due > until:
                    if bound is None:
                        return
                    raise StillBusy(self._busy(bound))
                self.fake.advance(max(0.0, due - self.fake.monotonic()))
                await asyncio.sleep(0)  # what the move woke (a lease heartbeat) runs
        finally:
            for t in running:
                t.cancel()
            if running:
                await asyncio.wait(running)

    async def _deliver(self, runner: Runner, m: Message) -> None:
        at = self.fake.monotonic() - self._start
        record, dead = await deliver(runner, m, self.broker, self.clock, self.topology, at)
        self.deliveries.append(record)
        if dead is not None:
            self.dead_letters.append(dead)

    def _busy(self, bound: str) -> str:
        last = ", ".join(f"{d.task}:{d.kind}" for d in self.deliveries[-5:])
        return (
            f"still busy after {bound} ({self.elapsed:g} simulated seconds so far): "
            f"{self.broker.describe(self.fake.monotonic())}; last outcomes: {last or 'none'}"
        )

    # ---- inspecting
    @property
    def elapsed(self) -> float:
        """Simulated seconds since the harness was made."""
        return self.fake.monotonic() - self._start

    @property
    def pending(self) -> list[Message]:
        """Messages still in a queue or a delay tier, in the order they will be delivered."""
        return self.broker.messages()

    def history(self, task_id: str) -> TaskHistory:
        """Every delivery of ``task_id`` so far, and its dead letter if it has one."""
        mine = tuple(d for d in self.deliveries if d.task_id == task_id)
        dead = next((d for d in reversed(self.dead_letters) if d.id == task_id), None)
        return TaskHistory(task_id, mine, dead)

    def counts(self, task: str | None = None) -> Counter[str]:
        """Deliveries by outcome metric (``success``, ``retried``, ``deferred_limit``, ``failed``...),
        of one task or of all."""
        return Counter(d.metric for d in self.deliveries if task is None or d.task == task)

    def kinds(self, task: str | None = None) -> Counter[str]:
        """Deliveries by kind (``acked``, ``skipped``, ``deferred``, ``retried``, ``dead_lettered``, ``cancelled``)."""
        return Counter(d.kind for d in self.deliveries if task is None or d.task == task)
