"""Task handles through a real ``sluice producer`` process: GET /v1/tasks/{id} (?wait=S), DELETE, and the
publish fields track / unique_key, on the real RabbitMQ and Redis (no worker: the end states are written
by a :class:`sluice.handles.Tracker` as a worker would)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from producer_helpers import Broker
from redis.asyncio import Redis
from test_http_queues import Running, running_producer

from sluice import protocol as p
from sluice.handles import ErrorInfo, State, TaskHandles, Tracker
from support.ports import free_port


@pytest.fixture
async def server(
    broker: Broker, tmp_path: Path, redis_url: str, r: object
) -> AsyncIterator[Running]:  # r: the test's Redis keys are deleted after it
    env = {"SLUICE_REDIS_URL": redis_url}
    async with running_producer(broker, tmp_path / "producer.log", "--max-wait", "10", env=env) as s:
        yield s


@pytest.fixture
async def tracker(redis: Redis, unique: str) -> AsyncIterator[Tracker]:
    t = Tracker(redis, unique, worker="test:1")
    try:
        yield t
    finally:
        await t.aclose()


async def test_tracked_task_reads_queued_then_its_end(server: Running, tracker: Tracker) -> None:
    before = p.now_ms()
    async with server.client() as c:
        r = await c.post("/v1/tasks", json={"task": "demo.echo", "payload": {"n": 1}, "track": True})
        assert r.status_code == 202, r.text
        task_id = r.json()["id"]
        queued = (await c.get(f"/v1/tasks/{task_id}")).json()
        assert queued["state"] == "queued"
        assert queued["task"] == "demo.echo"
        assert queued["queue"] == "default"
        assert before <= queued["published_ms"] <= p.now_ms()
        assert {"id", "state", "attempt", "result", "error"} <= set(queued)
        await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1, result_json=b'{"sum": 3}')
        done = (await c.get(f"/v1/tasks/{task_id}", params={"wait": 5})).json()
    assert done["state"] == "succeeded"
    assert done["result"] == {"sum": 3}
    assert done["worker"] == "test:1"
    assert [h["state"] for h in done["history"]] == ["queued", "succeeded"]


async def test_untracked_and_never_seen_ids_are_unknown(server: Running) -> None:
    async with server.client() as c:
        r = await c.post("/v1/tasks", json={"task": "demo.echo"})
        plain = (await c.get(f"/v1/tasks/{r.json()['id']}")).json()
        never = (await c.get("/v1/tasks/no-such-task")).json()
    assert plain["state"] == never["state"] == "unknown"


async def test_long_poll_is_woken_by_the_end(server: Running, tracker: Tracker) -> None:
    async with server.client() as c:
        task_id = (await c.post("/v1/tasks", json={"task": "demo.echo", "track": True})).json()["id"]
        start = time.monotonic()
        poll = asyncio.create_task(c.get(f"/v1/tasks/{task_id}", params={"wait": 10}))
        await asyncio.sleep(0.5)  # the poll is waiting (a fallback read would come after 5 s)
        assert not poll.done()
        await tracker.ended(task_id, state=State.FAILED, attempt=2, error=ErrorInfo("ValueError", "boom"))
        r = await poll
    took = time.monotonic() - start
    assert r.status_code == 200
    assert r.json()["state"] == "failed"
    assert r.json()["error"] == {"type": "ValueError", "message": "boom"}
    assert took < 4, f"answered after {took:.1f}s: not woken by the notification"


async def test_long_poll_answers_the_state_at_its_bound(server: Running) -> None:
    async with server.client() as c:
        task_id = (await c.post("/v1/tasks", json={"task": "demo.echo", "track": True})).json()["id"]
        start = time.monotonic()
        r = await c.get(f"/v1/tasks/{task_id}", params={"wait": 1.5})
        took = time.monotonic() - start
        too_long = await c.get(f"/v1/tasks/{task_id}", params={"wait": 11})  # --max-wait 10
        bad = await c.get("/v1/tasks/a%2Fb")
    assert r.json()["state"] == "queued"
    assert 1.4 <= took < 5
    assert too_long.status_code == 422
    assert bad.status_code in (404, 422)


async def test_delete_cancels_a_queued_task(server: Running) -> None:
    async with server.client() as c:
        task_id = (await c.post("/v1/tasks", json={"task": "demo.echo", "track": True})).json()["id"]
        first = await c.delete(f"/v1/tasks/{task_id}")
        again = await c.delete(f"/v1/tasks/{task_id}")
        status = (await c.get(f"/v1/tasks/{task_id}", params={"wait": 2})).json()
    assert first.status_code == 200, first.text
    assert first.json() == {
        "id": task_id,
        "previous": "queued",
        "state": "cancelled",
        "requested": False,
        "already_ended": False,
    }
    assert again.json()["already_ended"] is True
    assert status["state"] == "cancelled"


async def test_unique_key_duplicate_answers_200_with_the_existing_id(
    server: Running, broker: Broker, redis: Redis, unique: str
) -> None:
    body = {"task": "demo.echo", "payload": {"n": 1}, "unique_key": "report-42", "unique_for": 60}
    async with server.client() as c:
        first = await c.post("/v1/tasks", json=body)
        second = await c.post("/v1/tasks", json=body)
        assert first.status_code == 202, first.text
        assert second.status_code == 200, second.text
        task_id = first.json()["id"]
        assert second.json() == {
            "id": task_id,
            "duplicate_of": task_id,
            "task": "demo.echo",
            "queue": "default",
        }
        assert (await c.get(f"/v1/tasks/{task_id}")).json()["state"] == "queued"  # unique implies track
        # the key is released (as a worker does at the task's end): free again
        await TaskHandles(redis, unique).release_unique("report-42", task_id)
        third = await c.post("/v1/tasks", json=body)
        orphan = await c.post("/v1/tasks", json={"task": "demo.echo", "unique_for": 5})
    assert third.status_code == 202
    assert third.json()["id"] != task_id
    assert orphan.status_code == 422  # unique_for needs a unique_key
    m1, _ = await broker.take(2)
    assert m1.message_id == task_id
    assert m1.headers[p.H_UNIQUE_KEY] == "report-42"
    assert m1.headers[p.H_UNIQUE_RELEASE] == "end"
    assert m1.headers[p.H_TRACK] == 1


async def test_batch_publishes_one_task_per_unique_key(server: Running, broker: Broker) -> None:
    tasks = [
        {"task": "demo.echo", "unique_key": "k1"},
        {"task": "demo.echo", "unique_key": "k1"},
        {"task": "demo.echo", "unique_key": "k2", "unique_release": "success"},
        {"task": "demo.echo"},
    ]
    async with server.client() as c:
        r = await c.post("/v1/tasks/batch", json={"tasks": tasks})
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]
    assert ids[1] == ids[0]
    assert r.json()["duplicates"] == [{"index": 1, "duplicate_of": ids[0]}]
    got = await broker.take(3)
    assert [m.message_id for m in got] == [ids[0], ids[2], ids[3]]
    assert got[1].headers[p.H_UNIQUE_RELEASE] == "success"
    assert p.H_TRACK not in got[2].headers


async def test_redis_down_is_503_for_handles_only(broker: Broker, tmp_path: Path) -> None:
    env = {"SLUICE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    async with running_producer(broker, tmp_path / "producer.log", env=env) as server, server.client() as c:
        status = await c.get("/v1/tasks/some-id")
        cancel = await c.delete("/v1/tasks/some-id")
        dup = await c.post("/v1/tasks", json={"task": "demo.echo", "unique_key": "k"})
        tracked = await c.post("/v1/tasks", json={"task": "demo.echo", "track": True})
        plain = await c.post("/v1/tasks", json={"task": "demo.echo"})
        got = await broker.take(2)  # before the producer's exit deletes the test's queues
    for answer in (status, cancel, dup):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert "tracking unavailable" in answer.json()["detail"]
    assert tracked.status_code == 202  # marking queued fails open: the task is published
    assert plain.status_code == 202
    assert [m.message_id for m in got] == [tracked.json()["id"], plain.json()["id"]]


async def test_task_endpoints_need_the_token_when_auth_is_on(
    broker: Broker, tmp_path: Path, redis_url: str, r: object
) -> None:
    env = {"SLUICE_REDIS_URL": redis_url, "SLUICE_API_TOKENS": "handles-token-1"}
    async with running_producer(broker, tmp_path / "producer.log", env=env) as server:
        async with server.client() as anon:
            assert (await anon.get("/v1/tasks/x")).status_code == 401
            assert (await anon.delete("/v1/tasks/x")).status_code == 401
        async with server.client("handles-token-1") as c:
            assert (await c.get("/v1/tasks/x")).json()["state"] == "unknown"
            doc = (await c.get("/openapi.json")).json()
    for method in ("get", "delete"):
        assert doc["paths"]["/v1/tasks/{task_id}"][method]["security"] == [{"bearerAuth": []}]


async def test_sigterm_answers_an_open_long_poll_with_the_state_then(
    broker: Broker, tmp_path: Path, redis_url: str, r: object
) -> None:
    """SIGTERM while a `?wait=` long poll is open: the poll is answered at once, 200 with the task's
    state then (the client polls again elsewhere), not cut off or answered 500 by the drain's deadline;
    the producer still exits 0."""
    env = {"SLUICE_REDIS_URL": redis_url}
    log = tmp_path / "producer.log"
    async with running_producer(broker, log, "--max-wait", "60", env=env) as s, s.client() as c:
        task_id = (await c.post("/v1/tasks", json={"task": "demo.echo", "track": True})).json()["id"]
        poll = asyncio.create_task(c.get(f"/v1/tasks/{task_id}", params={"wait": 50}))
        await asyncio.sleep(0.5)  # the poll is open (it would answer after 50 s)
        assert not poll.done()
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        r_ = await asyncio.wait_for(poll, 20)
        took = time.monotonic() - start
        assert r_.status_code == 200, r_.text
        assert r_.json()["state"] == "queued"
        assert took < 3, f"answered {took:.1f} s after SIGTERM: not by the drain"
        assert await asyncio.wait_for(s.proc.wait(), 20) == 0, s.stderr()
