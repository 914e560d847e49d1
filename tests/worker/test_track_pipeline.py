"""Tracking in process, through the worker's own Runner and pipelines, on the real Redis: an untracked
task has no tracking step and writes nothing; the same task published with ``x-sluice-track`` is tracked;
results (``async`` and plain handlers) are stored by their return annotation; the unique key is released
at the end; a redelivery after success changes nothing; Redis down, the task runs and the failure is
counted. Real worker processes: tests/e2e/test_handles_states.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from sluice import task
from sluice.handles import State, TaskHandles
from sluice.protocol import H_TRACK, H_UNIQUE_KEY, H_UNIQUE_RELEASE, TaskMessage, encode_body
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import Telemetry
from sluice_worker.outcome import ACK, DeadLettered, Outcome
from sluice_worker.policies import Policies
from sluice_worker.runner import Runner
from sluice_worker.tracking import WorkerHandles
from support.ports import free_port


class Job(BaseModel):
    n: int = 0


class Doubled(BaseModel):
    n: int
    twice: int


RUNS: list[int] = []


@task("track.plain")
async def plain_task(p: Job) -> None:
    RUNS.append(p.n)


@task("track.double", result=True)
async def double(p: Job) -> Doubled:
    return Doubled(n=p.n, twice=2 * p.n)


@task("track.sync", result=True)
def sync_double(p: Job) -> list[int]:
    return [p.n, 2 * p.n]


class Worker:
    def __init__(self, runner: Runner, handles: WorkerHandles, telemetry: Telemetry) -> None:
        self.runner = runner
        self.handles = handles
        self.telemetry = telemetry

    async def deliver(self, msg: TaskMessage, **headers: object) -> Outcome:
        return await self.runner.run(encode_body(msg.payload, 1 << 20), {**msg.headers(), **headers}, msg.id)


async def _worker(client: Redis, settings: Settings) -> tuple[Worker, Policies, ThreadPoolExecutor]:
    telemetry = Telemetry("worker")
    handles = WorkerHandles(client, settings, telemetry=telemetry)
    await handles.start()
    policies = Policies(
        client, settings.prefix, tracker=handles.tracker, canceller=handles.canceller, telemetry=telemetry
    )
    pool = ThreadPoolExecutor(2)
    registry = Registry([plain_task, double, sync_double])
    runner = Runner(registry, settings, pool, policies.failures, policies)
    return Worker(runner, handles, telemetry), policies, pool


@pytest.fixture
async def worker(redis_url: str, unique: str) -> AsyncIterator[Worker]:
    client = Redis.from_url(redis_url)
    w, policies, pool = await _worker(client, Settings(redis_url=redis_url, prefix=unique))
    try:
        yield w
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await policies.aclose()
        await w.handles.aclose()
        keys = [k async for k in client.scan_iter(f"{unique}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def handles(redis: Redis, unique: str) -> AsyncIterator[TaskHandles]:
    async with TaskHandles(redis, unique) as h:
        yield h


async def test_an_untracked_task_has_no_tracking_step_and_writes_nothing(
    worker: Worker, handles: TaskHandles
) -> None:
    pipeline = worker.runner.pipeline("track.plain")
    assert pipeline is not None and not pipeline.tracked
    assert not any(s.tracking for s in pipeline.steps), pipeline
    msgs = [TaskMessage("track.plain", {"n": i}) for i in range(20)]
    for m in msgs:
        assert await worker.deliver(m) is ACK
    assert worker.handles.tracker.stats.writes == 0, "an untracked task wrote its state"
    assert (await handles.status(msgs[0].id)).state is State.UNKNOWN

    asked = TaskMessage("track.plain", {"n": 99})  # the same task, published with x-sluice-track
    assert await worker.deliver(asked, **{H_TRACK: 1}) is ACK
    s = await handles.status(asked.id)
    assert s.state is State.SUCCEEDED and s.task == "track.plain" and s.queue == "default", s
    assert [t.state for t in s.history] == [State.RUNNING, State.SUCCEEDED], s.history
    assert worker.runner.pipeline("track.plain") is pipeline, "the plain pipeline is still the plain one"
    assert worker.telemetry.snapshot()["handles"] == {"tracked": 1}


async def test_results_are_stored_by_their_return_annotation(worker: Worker, handles: TaskHandles) -> None:
    a = TaskMessage("track.double", {"n": 21})
    b = TaskMessage("track.sync", {"n": 4})  # a plain function, in the thread pool
    assert await worker.deliver(a) is ACK
    assert await worker.deliver(b) is ACK
    assert await handles.result(a.id, timeout=5) == {"n": 21, "twice": 42}
    assert await handles.result(b.id, timeout=5) == [4, 8]
    assert worker.telemetry.snapshot()["handles"] == {"tracked": 2, "results_stored": 2}


async def test_the_unique_key_is_released_at_the_end(worker: Worker, handles: TaskHandles) -> None:
    key = "report-2026-12"
    m = TaskMessage("track.plain", {"n": 1})
    assert await handles.claim_unique(key, m.id, 60) is None
    assert await handles.claim_unique(key, "someone-else", 60) == m.id, "the key is held while it runs"
    assert await worker.deliver(m, **{H_UNIQUE_KEY: key, H_UNIQUE_RELEASE: "end"}) is ACK
    assert await handles.claim_unique(key, "next", 60) is None, "the key is free once the task ended"


async def test_a_redelivery_after_success_does_not_move_it_back(worker: Worker, handles: TaskHandles) -> None:
    m = TaskMessage("track.double", {"n": 5})
    assert await worker.deliver(m) is ACK
    first = await handles.status(m.id)
    stats = worker.handles.tracker.stats
    ignored, writes = stats.ignored, stats.writes
    assert await worker.deliver(m) is ACK  # same id, same attempt: as the broker redelivers it
    await worker.handles.tracker.aclose()  # the fire-and-forget running write has answered
    again = await handles.status(m.id)
    assert again.state is State.SUCCEEDED and again.history == first.history, again
    # every write of the redelivery ignored (its running and its end, or the end standing for both)
    assert stats.writes > writes and stats.ignored - ignored == stats.writes - writes, stats


async def test_with_redis_down_a_tracked_task_runs_and_the_failure_is_counted(unique: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    w, policies, pool = await _worker(client, Settings(redis_url=url, prefix=unique))
    try:
        RUNS.clear()
        for i in range(3):
            assert await w.deliver(TaskMessage("track.plain", {"n": i}), **{H_TRACK: 1}) is ACK
        assert RUNS == [0, 1, 2]
        assert w.handles.tracker.stats.failures >= 1
        assert w.telemetry.snapshot()["handles"]["tracking_failures"] >= 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await policies.aclose()
        await w.handles.aclose()
        await client.aclose()


async def test_a_tracked_message_that_cannot_run_is_recorded_dead(
    worker: Worker, handles: TaskHandles
) -> None:
    bad = TaskMessage("track.double", {"n": "not a number"})  # a tracked task, its payload fails the model
    lost = TaskMessage("track.nosuch", {})  # no such task, published with x-sluice-track
    untracked = TaskMessage("track.plain", {"n": "x"})  # neither declared nor asked: nothing written
    out = await worker.deliver(bad)
    assert isinstance(out, DeadLettered) and out.reason == "invalid_payload"
    out = await worker.deliver(lost, **{H_TRACK: 1})
    assert isinstance(out, DeadLettered) and out.reason == "unknown_task"
    assert isinstance(await worker.deliver(untracked), DeadLettered)
    s = await handles.status(bad.id)
    assert s.state is State.DEAD and s.reason == "invalid_payload" and s.error is not None, s
    s = await handles.status(lost.id)
    assert s.state is State.DEAD and s.reason == "unknown_task" and s.task == "track.nosuch", s
    assert (await handles.status(untracked.id)).state is State.UNKNOWN
