"""TaskHandles and Tracker on the real Redis: what each write records, read back through status; cancel,
replay and unique enqueue; the TTLs."""

from __future__ import annotations

import asyncio
import json
import uuid

from redis.asyncio import Redis

from sluice.handles import (
    CancelReport,
    ErrorInfo,
    QueuedInfo,
    State,
    TaskHandles,
    Tracker,
)
from sluice.handles._writes import LIVE_TTL
from support.waiting import eventually


def new_id() -> str:
    return uuid.uuid4().hex


async def test_unknown_id(handles: TaskHandles) -> None:
    status = await handles.status(new_id())
    assert status.state is State.UNKNOWN
    assert status.as_dict()["state"] == "unknown" and status.history == ()


async def test_a_tracked_run_read_back(handles: TaskHandles, tracker: Tracker, redis: Redis) -> None:
    task_id = new_id()
    await handles.mark_queued([QueuedInfo(task_id, "demo.add", "default", 1_700_000_000_000)])
    queued = await handles.status(task_id)
    assert (queued.state, queued.task, queued.queue, queued.published_ms) == (
        State.QUEUED,
        "demo.add",
        "default",
        1_700_000_000_000,
    )
    tracker.running(task_id, task="demo.add", queue="default", attempt=1, generation=0, published_ms=1)
    running = await eventually(
        lambda: _in(handles, task_id, State.RUNNING), within=5, what="the running write"
    )
    assert running.worker == "testhost:1" and running.started_ms is not None
    assert running.published_ms == 1_700_000_000_000  # info fields are the producer's, kept
    tracker.retrying(task_id, attempt=1, generation=0, error=ErrorInfo("ValueError", "boom"), next_run_ms=123)
    await eventually(lambda: _in(handles, task_id, State.RETRYING), within=5, what="the retrying write")
    tracker.running(task_id, task="demo.add", queue="default", attempt=2, generation=0, published_ms=1)
    await tracker.ended(task_id, state=State.SUCCEEDED, attempt=2, generation=0, result_json=b'{"sum": 3}')
    done = await handles.status(task_id)
    assert done.state is State.SUCCEEDED and done.attempt == 2
    assert done.result == {"sum": 3} and done.result_error is None
    assert done.error == ErrorInfo("ValueError", "boom")  # the last failure stays on record
    assert done.next_run_ms is None and done.finished_ms is not None
    assert [t.state for t in done.history] == [
        State.QUEUED,
        State.RUNNING,
        State.RETRYING,
        State.RUNNING,
        State.SUCCEEDED,
    ]
    as_json = json.loads(json.dumps(done.as_dict()))
    assert {"id", "state", "attempt", "result", "error"} <= as_json.keys()
    assert as_json["error"] == {"type": "ValueError", "message": "boom"}
    # an ended record expires after the tracker's ttl (a day); a live one after a week
    ttl = await redis.pttl(handles.keys.task(task_id))
    assert 86_000_000 < ttl <= 86_400_000
    assert 86_000_000 < await redis.pttl(handles.keys.history(task_id)) <= 86_400_000
    # running, retrying, then attempt 2's running: not sent yet when its end came, so folded into it
    assert tracker.stats.failures == 0 and tracker.stats.writes == tracker.stats.applied == 3


async def test_refused_result_and_dead_reason(handles: TaskHandles, tracker: Tracker) -> None:
    big, dead = new_id(), new_id()
    await tracker.ended(big, state=State.SUCCEEDED, attempt=1, result_error="result too large: 9 bytes > 8")
    status = await handles.status(big)
    assert status.state is State.SUCCEEDED and status.result is None
    assert status.result_error == "result too large: 9 bytes > 8"
    await tracker.ended(
        dead, state=State.DEAD, attempt=3, reason="handler_error", error=ErrorInfo("KeyError", "'x'")
    )
    status = await handles.status(dead)
    assert (status.state, status.reason, status.error) == (
        State.DEAD,
        "handler_error",
        ErrorInfo("KeyError", "'x'"),
    )


async def test_deferred_record(handles: TaskHandles, tracker: Tracker, redis: Redis) -> None:
    task_id = new_id()
    tracker.deferred(
        task_id, attempt=1, reason="rate_limited", next_run_ms=1_800_000_000_000, task="demo.x", queue="q"
    )
    status = await eventually(lambda: _in(handles, task_id, State.DEFERRED), within=5, what="deferred")
    assert (status.reason, status.next_run_ms, status.task) == ("rate_limited", 1_800_000_000_000, "demo.x")
    assert await redis.pttl(handles.keys.task(task_id)) > (LIVE_TTL - 60) * 1000


async def test_cancel_by_state(handles: TaskHandles, tracker: Tracker, redis: Redis) -> None:
    queued, running, done, unknown = new_id(), new_id(), new_id(), new_id()
    await handles.mark_queued([QueuedInfo(queued, "demo.x", "default", 1)])
    tracker.running(running, task="demo.x", queue="default", attempt=1)
    await tracker.ended(done, state=State.SUCCEEDED, attempt=1)
    await eventually(lambda: _in(handles, running, State.RUNNING), within=5, what="running")
    reports = await handles.cancel(queued, running, done, unknown)
    assert reports == [
        CancelReport(queued, State.QUEUED, State.CANCELLED),
        CancelReport(running, State.RUNNING, State.RUNNING, requested=True),
        CancelReport(done, State.SUCCEEDED, State.SUCCEEDED),
        CancelReport(unknown, State.UNKNOWN, State.CANCELLED),
    ]
    assert reports[2].already_ended and not reports[0].already_ended
    assert (await handles.status(queued)).state is State.CANCELLED
    assert (await handles.status(unknown)).state is State.CANCELLED
    still = await handles.status(running)
    assert still.state is State.RUNNING and still.cancel_requested
    # the worker that receives the cancelled task later writes its end: ignored (it is final)
    await tracker.ended(queued, state=State.SUCCEEDED, attempt=1)
    assert (await handles.status(queued)).state is State.CANCELLED
    # every id is in the cancel set, with its expiry (ms) about a day ahead
    scores = dict(await redis.zrange(handles.keys.cancels, 0, -1, withscores=True))
    assert {k.decode() for k in scores} == {queued, running, done, unknown}
    assert await redis.pttl(handles.keys.cancels) > 86_000_000


async def test_a_cancel_that_raced_the_start_gives_way_to_the_writes_that_prove_the_task_ran(
    handles: TaskHandles, redis: Redis, prefix: str
) -> None:
    """A cancel that finds ``queued`` marks the record ``cancelled`` (and the attempt it saw); the worker
    was already running the task, its start held. Its writes of that attempt that prove the task ran are
    applied over the mark: the end standing for the held start, or the start itself once released
    (then the end as usual). An end that does not prove a run (the task acked as cancelled), or a write
    of an earlier attempt, is ignored as before; a replay clears the mark."""
    folded, released, retried = new_id(), new_id(), new_id()
    await handles.mark_queued([QueuedInfo(i, "demo.x", "default", 1) for i in (folded, released)])
    async with Tracker(redis, prefix, worker="testhost:1", running_after=60) as tracker:
        tracker.running(folded, task="demo.x", queue="default", attempt=1)
        tracker.running(released, task="demo.x", queue="default", attempt=1)
        reports = await handles.cancel(folded, released)
        assert [(r.previous, r.state) for r in reports] == [(State.QUEUED, State.CANCELLED)] * 2
        await tracker.ended(folded, state=State.SUCCEEDED, attempt=1, result_json=b"7")
        got = await handles.status(folded)
        assert (got.state, got.result, got.cancel_requested) == (State.SUCCEEDED, 7, True)
        assert got.started_ms is not None
        assert [t.state for t in got.history] == [
            State.QUEUED,
            State.CANCELLED,
            State.RUNNING,
            State.SUCCEEDED,
        ]
    # leaving the tracker wrote the start still held: the task runs, a cancel requested
    got = await handles.status(released)
    assert (got.state, got.cancel_requested) == (State.RUNNING, True)
    async with Tracker(redis, prefix, worker="testhost:1") as tracker:
        await tracker.ended(released, state=State.CANCELLED, attempt=1)  # its handler saw the cancel
        assert (await handles.status(released)).state is State.CANCELLED
        # attempt 2 is retrying when the cancel comes: a late write of attempt 1 does not undo it
        tracker.retrying(retried, attempt=2, error=ErrorInfo("E", "x"), next_run_ms=1, task="demo.x")
        await eventually(lambda: _in(handles, retried, State.RETRYING), within=5, what="retrying")
        await handles.cancel(retried)
        tracker.running(retried, task="demo.x", queue="default", attempt=1)
        await tracker.ended(retried, state=State.FAILED, attempt=1)
        assert (await handles.status(retried)).state is State.CANCELLED
        # an end that proves no run (a worker acking the cancelled attempt 3 unrun) is ignored
        await tracker.ended(retried, state=State.CANCELLED, attempt=3, reason="cancelled")
        assert (await handles.status(retried)).attempt == 2
        assert await redis.hget(handles.keys.task(retried), "marked") == b"2"
    await handles.replayed(retried)
    assert await redis.hget(handles.keys.task(retried), "marked") is None


async def test_cancel_batch_rule(handles: TaskHandles, redis: Redis) -> None:
    await handles.cancel_batch("demo.slow", 1_000)
    await handles.cancel_batch("demo.slow", 500)  # an earlier cut-off does not narrow the rule
    rule = json.loads(await redis.hget(handles.keys.cancel_rules, "demo.slow"))
    assert rule["before_ms"] == 1_000 and rule["expires_ms"] > 1_000
    assert await redis.pttl(handles.keys.cancel_rules) > 86_000_000


async def test_replayed_keeps_history(handles: TaskHandles, tracker: Tracker) -> None:
    task_id = new_id()
    tracker.running(task_id, task="demo.x", queue="default", attempt=1)
    await tracker.ended(task_id, state=State.DEAD, attempt=1, reason="handler_error")
    assert await handles.replayed(task_id) == 1
    status = await handles.status(task_id)
    assert (status.state, status.generation, status.attempt, status.reason) == (State.QUEUED, 1, 1, None)
    assert [t.state for t in status.history] == [State.RUNNING, State.DEAD, State.QUEUED]
    await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1, generation=1)
    assert (await handles.status(task_id)).state is State.SUCCEEDED
    assert await handles.replayed(new_id()) == 1  # an unknown id starts at generation 1


async def test_unique_claim_and_release(handles: TaskHandles, redis: Redis, prefix: str) -> None:
    key, first, second = f"{prefix}-order-1", new_id(), new_id()
    assert await handles.claim_unique(key, first, ttl=60) is None
    assert await handles.claim_unique(key, first, ttl=60) is None  # the holder's own resend
    assert await handles.claim_unique(key, second, ttl=60) == first
    await handles.release_unique(key, second)  # not the holder: nothing happens
    assert await handles.claim_unique(key, second, ttl=60) == first
    await handles.release_unique(key, first)
    assert await handles.claim_unique(key, second, ttl=60) is None
    assert 59_000 < await redis.pttl(handles.keys.unique(key)) <= 60_000


async def test_unique_claim_is_atomic(handles: TaskHandles, prefix: str) -> None:
    ids = [new_id() for _ in range(200)]
    answers = await asyncio.gather(*(handles.claim_unique("k", i, ttl=60) for i in ids))
    winners = [i for i, a in zip(ids, answers, strict=True) if a is None]
    assert len(winners) == 1
    assert set(answers) == {None, winners[0]}


async def test_ended_releases_the_unique_key_per_mode(handles: TaskHandles, tracker: Tracker) -> None:
    for mode, state, freed in [
        ("end", State.FAILED, True),
        ("success", State.FAILED, False),
        ("success", State.SUCCEEDED, True),
        ("ttl", State.SUCCEEDED, False),
    ]:
        task_id, other = new_id(), new_id()
        key = f"{mode}-{state}"
        assert await handles.claim_unique(key, task_id, ttl=60) is None
        await tracker.ended(task_id, state=state, attempt=1, unique_key=key, unique_release=mode)
        answer = await handles.claim_unique(key, other, ttl=60)
        assert (answer is None) is freed, (mode, state)


async def _in(handles: TaskHandles, task_id: str, state: State) -> object:
    status = await handles.status(task_id)
    return status if status.state is state else None
