"""Every state of a task handle reached by a real run and read back (issue 13).

Real ``sluice worker`` processes (the installed console script, ``--tasks handles_tasks``), tasks
published with ``sluice publish``, the real RabbitMQ and Redis; each state read back with
:class:`sluice.handles.TaskHandles` on the test's prefix. Runs are counted in Redis by the handlers
(tests/e2e/handles_tasks.py), so "not run" is measured. Cancels: tests/e2e/test_handles_cancel.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from sluice.handles import State, TaskHandles, TaskStatus
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from support.queues import queue_state
from support.waiting import eventually
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


def publish(env: dict[str, str], task: str, payload: dict[str, object], *options: str) -> str:
    """``sluice publish TASK --payload JSON OPTIONS``: the task id it prints."""
    done = subprocess.run(
        [SLUICE, "publish", task, "--payload", json.dumps(payload), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def reaches(handles: TaskHandles, task_id: str, *states: State, within: float = 30) -> TaskStatus:
    """The task's status once it is in one of ``states``."""

    async def check() -> TaskStatus | None:
        s = await handles.status(task_id)
        return s if s.state in states else None

    got: TaskStatus | None = await eventually(check, within, f"task {task_id} in {', '.join(states)}")
    assert got is not None
    return got


def runs(r: sync_redis.Redis, key: str) -> int:
    return int(r.hget(key, "runs") or 0)


class Rig:
    """This test's prefix, brokers and worker processes (each killed after the test if still running)."""

    def __init__(
        self,
        env: dict[str, str],
        handles: TaskHandles,
        r: sync_redis.Redis,
        unique: str,
        amqp_url: str,
        logs: Path,
    ) -> None:
        self.env, self.handles, self.r, self.unique, self.amqp_url, self.logs = (
            env,
            handles,
            r,
            unique,
            amqp_url,
            logs,
        )
        self.key = f"{unique}:runs"
        self.workers: list[WorkerProcess] = []

    def worker(self, *args: str, consuming: bool = False) -> WorkerProcess:
        w = WorkerProcess(
            ["--tasks", "handles_tasks", *args], self.env, self.logs / f"worker{len(self.workers)}.log"
        )
        self.workers.append(w)
        if consuming:
            w.wait_consuming(self.amqp_url, f"{self.unique}.q.default")
        return w

    def publish(self, task: str, payload: dict[str, object], *options: str) -> str:
        return publish(self.env, task, payload, *options)

    def runs(self, key: str | None = None) -> int:
        return runs(self.r, key or self.key)

    def dlq_empty(self) -> None:
        dlq = queue_state(self.amqp_url, f"{self.unique}.dlq") or (0, 0)
        assert dlq[0] == 0, "a cancelled task was dead-lettered"


@contextlib.asynccontextmanager
async def rigged(
    amqp_url: str, redis_url: str, unique: str, redis: Redis, r: sync_redis.Redis, logs: Path
) -> AsyncIterator[Rig]:
    """A :class:`Rig` on this test's prefix; its workers are killed after the test if still running."""
    env = worker_env(amqp_url, redis_url, unique, HERE, HANDLES_COUNT_URL=redis_url)
    async with TaskHandles(redis, unique) as handles:
        rig = Rig(env, handles, r, unique, amqp_url, logs)
        try:
            yield rig
        finally:
            for w in rig.workers:
                w.kill()


@pytest.fixture
async def rig(
    amqp_url: str, redis_url: str, unique: str, redis: Redis, r: sync_redis.Redis, tmp_path: Path
) -> AsyncIterator[Rig]:
    async with rigged(amqp_url, redis_url, unique, redis, r, tmp_path) as one:
        yield one


def ended_well(w: WorkerProcess, code: int) -> str:
    """The worker exited 0 (``code``), without a traceback in its log; answers the log."""
    log = w.stderr()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return log


async def test_succeeded_with_a_result_failed_and_a_refused_result(rig: Rig) -> None:
    w = rig.worker(consuming=True)
    env, handles, k = rig.env, rig.handles, rig.key
    ok = publish(env, "handles.add", {"key": k, "n": 41})
    bad = publish(env, "handles.fail", {"key": k, "n": 7})
    big = publish(env, "handles.big", {"key": k})

    s = await reaches(handles, ok, State.SUCCEEDED, State.FAILED, State.DEAD)
    assert s.state is State.SUCCEEDED and s.result == {"total": 42, "by": ok}, s
    assert s.attempt == 1 and s.task == "handles.add" and s.queue == "default" and s.worker, s
    assert s.started_ms is not None and s.finished_ms is not None and s.started_ms <= s.finished_ms, s
    assert [t.state for t in s.history][-2:] == [State.RUNNING, State.SUCCEEDED], s.history

    s = await reaches(handles, bad, State.SUCCEEDED, State.FAILED, State.DEAD)
    assert s.state is State.FAILED and s.reason == "handler_error", s
    assert s.error is not None and s.error.type.endswith("ValueError"), s
    assert s.error.message == "job 7 fails on purpose", s

    s = await reaches(handles, big, State.SUCCEEDED, State.FAILED, State.DEAD)
    assert s.state is State.SUCCEEDED and s.result is None, s
    assert s.result_error is not None and s.result_error.startswith(
        "result too large: 70002 bytes > 65536"
    ), s

    after = publish(env, "handles.add", {"key": k, "n": 1})  # the worker is fine after the refusal
    s = await reaches(handles, after, State.SUCCEEDED)
    assert s.result == {"total": 2, "by": after}
    assert rig.runs() == 4
    ended_well(w, w.terminate(timeout=30))


async def test_retrying_then_dead_and_deferred_by_a_rate_limit(rig: Rig) -> None:
    w = rig.worker(consuming=True)
    env, handles, k = rig.env, rig.handles, rig.key
    before = time.time() * 1000
    flaky = publish(env, "handles.flaky", {"key": k})
    # read before the other publishes: on a loaded machine three CLI publishes took longer than its 8 s
    # backoff, and the record said attempt 2 already
    s = await reaches(handles, flaky, State.RETRYING)
    assert s.attempt == 1 and s.error is not None and s.error.type.endswith("ConnectionError"), s
    assert s.error.message == "flaky on purpose"
    assert s.next_run_ms is not None and s.next_run_ms >= before + 6000, s  # its 8 s backoff

    dead = publish(env, "handles.budget", {"key": k})
    limited = [publish(env, "handles.limited", {"key": f"{k}:limited", "n": i}) for i in range(2)]

    s = await reaches(handles, dead, State.DEAD, State.FAILED, State.SUCCEEDED)
    assert s.state is State.DEAD and s.reason == "retry_budget_exhausted", s
    assert s.error is not None and s.error.type.endswith("ConnectionError"), s

    statuses = [await reaches(handles, i, State.SUCCEEDED, State.DEFERRED) for i in limited]
    assert sorted(s.state for s in statuses) == [State.DEFERRED, State.SUCCEEDED], statuses
    deferred = next(s for s in statuses if s.state is State.DEFERRED)
    assert deferred.reason == "rate_limited" and deferred.attempt == 1, deferred
    assert deferred.next_run_ms is not None and deferred.next_run_ms > before, deferred
    assert rig.runs(f"{k}:limited") == 1

    reports = await handles.cancel(flaky, deferred.id)  # leave nothing to run after the test
    assert len(reports) == 2
    ended_well(w, w.terminate(timeout=30))


async def test_a_redelivery_after_success_stays_succeeded(rig: Rig, redis_url: str) -> None:
    """The same message (same id, same attempt) delivered again after it succeeded: the handler runs
    again, its ``running`` and ``succeeded`` writes are older than the record's end and change nothing.
    One delivery at a time: once a task published after it has succeeded, its writes are done."""
    w = rig.worker("--concurrency", "1", consuming=True)
    handles, k = rig.handles, rig.key
    msg = TaskMessage("handles.add", {"key": k, "n": 1})
    settings = Settings(amqp_url=rig.amqp_url, redis_url=redis_url, prefix=rig.unique)
    async with Publisher(settings) as pub:
        await pub.publish(msg)
        first = await reaches(handles, msg.id, State.SUCCEEDED)
        await pub.publish(msg)  # as the broker redelivers it: same id, same attempt
        marker = await pub.publish(TaskMessage("handles.add", {"key": f"{k}:marker", "n": 2}))
        await reaches(handles, marker, State.SUCCEEDED)
    assert rig.runs() == 2, "the redelivery ran"
    again = await handles.status(msg.id)
    assert again.state is State.SUCCEEDED, again
    assert again.finished_ms == first.finished_ms and again.result == first.result, (first, again)
    assert [t.state for t in again.history] == [t.state for t in first.history], again.history
    ended_well(w, w.terminate(timeout=30))


async def test_a_unique_key_is_free_again_once_its_task_ended(rig: Rig) -> None:
    """``sluice publish --unique-key``: a second publish while the task waits answers its id; the worker
    releases the key when the task ends, so the next publish is a new task."""
    key = f"{rig.unique}-report"
    first = rig.publish("handles.mark", {"key": rig.key}, "--unique-key", key)
    assert rig.publish("handles.mark", {"key": rig.key}, "--unique-key", key) == first, "a second task"
    w = rig.worker("--burst")
    ended_well(w, w.wait(60))
    assert rig.runs() == 1
    assert (await rig.handles.status(first)).state is State.SUCCEEDED
    again = rig.publish("handles.mark", {"key": rig.key}, "--unique-key", key)
    assert again != first, "the key was not released when its task ended"
    await rig.handles.cancel(again)  # nothing left to run after the test
