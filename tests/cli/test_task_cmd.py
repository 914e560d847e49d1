"""``sluice task status|wait|cancel`` and the tracked side of ``sluice dlq replay``, through the installed
console script on the real RabbitMQ and Redis. No worker: end states are written by a
:class:`sluice.handles.Tracker`, as a worker writes them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pika
import pytest
import redis as redis_sync
from redis.asyncio import Redis
from test_exit_status import DEAD_REDIS, SLUICE, one_error_line, sluice

from sluice import protocol as p
from sluice.handles import ErrorInfo, State, TaskHandles, Tracker


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str, r: redis_sync.Redis) -> dict[str, str]:
    # r: every Redis key of this test's prefix is deleted after it
    return {"SLUICE_AMQP_URL": amqp_url, "SLUICE_REDIS_URL": redis_url, "SLUICE_PREFIX": unique}


def publish_tracked(env: dict[str, str], *extra: str) -> str:
    r = sluice("publish", "demo.echo", "--track", *extra, env=env)
    assert r.returncode == 0, r.stderr
    (task_id,) = r.stdout.split()
    return task_id


def end(redis_url: str, prefix: str, task_id: str, state: State, **kw: object) -> None:
    """Write a terminal state as a worker's Tracker does."""

    async def go() -> None:
        redis = Redis.from_url(redis_url)
        async with Tracker(redis, prefix, worker="test:7") as tracker:
            await tracker.ended(task_id, state=state, attempt=1, **kw)  # type: ignore[arg-type]
        await redis.aclose()

    asyncio.run(go())


def test_status_of_a_queued_task(env: dict[str, str]) -> None:
    task_id = publish_tracked(env)
    r = sluice("task", "status", task_id, "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"id", "state", "attempt", "result", "error"} <= set(doc)
    assert doc["id"] == task_id
    assert doc["state"] == "queued"
    assert doc["task"] == "demo.echo"
    human = sluice("task", "status", task_id, env=env)
    assert human.returncode == 0
    assert human.stdout.startswith(f"{task_id}  queued")
    assert "task: demo.echo" in human.stdout


def test_a_tracked_bulk_publish_marks_every_task_queued(
    env: dict[str, str], redis_url: str, unique: str
) -> None:
    """1,200 tasks: the queued marks go in batches of 500 (the last one flushed at the end)."""
    r = sluice("publish", "demo.echo", "--track", "--count", "1200", env=env)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 1200

    async def states() -> list[str]:
        redis = Redis.from_url(redis_url)
        async with TaskHandles(redis, unique) as handles:
            got = [str((await handles.status(i)).state) for i in ids]
        await redis.aclose()
        return got

    assert set(asyncio.run(states())) == {"queued"}


def test_envelopes_carry_their_own_unique_keys(env: dict[str, str]) -> None:
    lines = [
        {"task": "demo.echo", "unique_key": "a"},
        {"task": "demo.echo", "unique_key": "b", "unique_release": "success"},
        {"task": "demo.echo", "unique_key": "a"},
        {"task": "demo.echo", "track": True},
        {"task": "demo.echo", "track": 1},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    r = subprocess.run(
        [SLUICE, "publish", "--envelopes", "-", "--json"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert r.returncode == 1, r.stderr  # line 5: track must be a boolean
    doc = json.loads(r.stdout)
    assert len(doc["ids"]) == 3
    assert doc["duplicates"] == 1
    assert doc["duplicate_of"] == [{"where": "stdin line 3", "duplicate_of": doc["ids"][0]}]
    assert doc["invalid"] == 1
    states = [json.loads(sluice("task", "status", i, "--json", env=env).stdout)["state"] for i in doc["ids"]]
    assert states == ["queued"] * 3


def test_status_of_an_unknown_id_is_0_and_says_unknown(env: dict[str, str]) -> None:
    r = sluice("task", "status", "never-published", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "unknown"


def test_wait_times_out_with_exit_3(env: dict[str, str]) -> None:
    task_id = publish_tracked(env)
    start = time.monotonic()
    r = sluice("task", "wait", task_id, "--timeout", "1", env=env)
    took = time.monotonic() - start
    assert r.returncode == 3, r.stderr
    assert "timed out after 1s: the task is queued" in r.stderr
    assert took < 10


def test_wait_on_a_succeeded_task_prints_its_result(env: dict[str, str], redis_url: str, unique: str) -> None:
    task_id = publish_tracked(env)
    end(redis_url, unique, task_id, State.SUCCEEDED, result_json=b'{"rows": 12}')
    r = sluice("task", "wait", task_id, "--timeout", "5", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "succeeded"
    assert doc["result"] == {"rows": 12}
    human = sluice("task", "wait", task_id, env=env)  # no --timeout: an ended task answers at once
    assert human.returncode == 0
    assert 'result: {"rows": 12}' in human.stdout


def test_wait_is_woken_when_the_task_ends(env: dict[str, str], redis_url: str, unique: str) -> None:
    task_id = publish_tracked(env)
    proc = subprocess.Popen(
        [SLUICE, "task", "wait", task_id, "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        time.sleep(1.5)  # the waiter is subscribed (it has read the queued status)
        assert proc.poll() is None
        start = time.monotonic()
        end(redis_url, unique, task_id, State.DEAD, reason="handler_error")
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert f"{task_id}  dead" in out
    assert "reason: handler_error" in out
    assert took < 4, f"woken {took:.1f}s after the end: not by the notification"


@pytest.mark.parametrize(
    ("state", "kw"),
    [
        (State.FAILED, {"error": ErrorInfo("KeyError", "'x'")}),
        (State.DEAD, {"reason": "handler_error"}),
        (State.CANCELLED, {}),
    ],
)
def test_wait_on_a_task_that_did_not_succeed_exits_1(
    env: dict[str, str], redis_url: str, unique: str, state: State, kw: dict[str, object]
) -> None:
    task_id = publish_tracked(env)
    end(redis_url, unique, task_id, state, **kw)
    r = sluice("task", "wait", task_id, "--timeout", "5", "--json", env=env)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == state.value
    if state is State.FAILED:
        assert doc["error"] == {"type": "KeyError", "message": "'x'"}


def test_cancel_queued_then_ended(env: dict[str, str]) -> None:
    a, b = publish_tracked(env), publish_tracked(env)
    r = sluice("task", "cancel", a, b, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{a}: cancelled (was queued)", f"{b}: cancelled (was queued)"]
    again = sluice("task", "cancel", a, "--json", env=env)
    assert json.loads(again.stdout)["already_ended"] is True
    waited = sluice("task", "wait", a, "--timeout", "5", env=env)
    assert waited.returncode == 1
    assert f"{a}  cancelled" in waited.stdout


def test_cancel_a_batch_by_name_and_time(env: dict[str, str], redis_url: str, unique: str) -> None:
    r = sluice("task", "cancel", "--task", "demo.echo", "--before", "2026-01-01T00:00:00Z", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["before_ms"] == 1767225600000
    client = redis_sync.Redis.from_url(redis_url)
    rule = client.hget(f"{unique}:cancel-rules", "demo.echo")
    client.close()
    assert rule is not None
    assert json.loads(rule)["before_ms"] == 1767225600000
    now = sluice("task", "cancel", "--task", "demo.echo", "--before", "now", env=env)
    assert now.returncode == 0
    assert now.stdout.startswith("cancelled every demo.echo task published before ")


BAD = [
    ["task"],
    ["task", "status"],
    ["task", "status", "bad/id"],
    ["task", "wait", "x", "--timeout", "0"],
    ["task", "wait", "x", "--timeout", "soon"],
    ["task", "cancel"],
    ["task", "cancel", "x", "--task", "demo.echo", "--before", "now"],
    ["task", "cancel", "--task", "demo.echo"],
    ["task", "cancel", "--task", "demo.echo", "--before", "yesterday"],
    ["task", "cancel", "--task", "demo.echo", "--before", "2999-01-01T00:00:00"],
    ["publish", "demo.echo", "--unique-for", "10s"],
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_arguments_exit_2_in_one_line(args: list[str], env: dict[str, str]) -> None:
    r = sluice(*args, env=env)
    if args == ["task"]:  # the group alone: its help
        assert r.returncode in (0, 2)
        return
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize(
    "args", [["task", "status", "x"], ["task", "wait", "x", "--timeout", "1"], ["task", "cancel", "x"]]
)
def test_redis_down_exits_1_in_one_line(args: list[str], env: dict[str, str]) -> None:
    r = sluice(*args, env={**env, "SLUICE_REDIS_URL": DEAD_REDIS})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "unavailable" in one_error_line(r)


def test_dlq_replay_queues_a_tracked_task_again(
    env: dict[str, str], amqp_url: str, redis_url: str, unique: str
) -> None:
    """A dead tracked task replayed: queued again, generation 1, history kept; the copy carries it."""
    task_id = publish_tracked(env)
    assert sluice("dlq", "ls", env=env).returncode == 0  # declares the DLQ under this prefix
    end(redis_url, unique, task_id, State.DEAD, reason="handler_error")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        _, _, body = ch.basic_get(f"{unique}.q.default", auto_ack=True)
        ch.basic_publish(
            "",
            f"{unique}.dlq",
            body,
            pika.BasicProperties(
                message_id=task_id,
                delivery_mode=2,
                headers={
                    p.H_TASK: "demo.echo",
                    p.H_QUEUE: "default",
                    p.H_ATTEMPT: 1,
                    p.H_TRACK: 1,
                    p.H_DEAD_REASON: "handler_error",
                },
            ),
        )
    finally:
        conn.close()
    r = sluice("dlq", "replay", "--id", task_id, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(sluice("task", "status", task_id, "--json", env=env).stdout)
    assert doc["state"] == "queued"
    assert doc["generation"] == 1
    assert [h["state"] for h in doc["history"]][:2] == ["queued", "dead"]
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method, props, _ = conn.channel().basic_get(f"{unique}.q.default", auto_ack=True)
    finally:
        conn.close()
    assert method is not None
    assert props.message_id == task_id
    assert props.headers[p.H_GENERATION] == 1
