"""Unique enqueue on the real RabbitMQ and Redis: exactly one task per key under concurrency (4 processes,
200 publishes at once), free again once released, and never left taken by a publish that failed.

Run as a script (``python test_unique_enqueue.py AMQP REDIS PREFIX KEY N START``), this module is one of
the publishing processes: N concurrent :class:`sluice_producer.Enqueuer` publishes of KEY at wall-clock
time START, printing one line per publish: ``published ID`` or ``duplicate ID``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from producer_helpers import Broker, run_cli
from redis.asyncio import Redis
from test_http_partial import policy_applied
from test_http_queues import running_producer

from sluice.handles import State, Tracker
from sluice.protocol import TaskMessage
from sluice.settings import Settings
from support.brokerctl import rabbitmqctl_argv

PROCESSES = 4
PER_PROCESS = 50


async def _publish_at(amqp: str, redis_url: str, prefix: str, key: str, n: int, start: float) -> None:
    from sluice.handles import TaskHandles
    from sluice.publisher import Publisher
    from sluice_producer import Enqueuer

    settings = Settings(amqp_url=amqp, redis_url=redis_url, prefix=prefix, publish_timeout=10.0)
    redis = Redis.from_url(redis_url)
    async with (
        Publisher(settings) as pub,
        TaskHandles(redis, prefix) as handles,
        Enqueuer(pub, handles) as enq,
    ):
        await pub.ensure_queue("default")
        await asyncio.sleep(max(0.0, start - time.time()))
        outs = await asyncio.gather(
            *(enq.publish(TaskMessage("demo.echo", {"i": i}), unique_key=key) for i in range(n))
        )
    await redis.aclose()
    for out in outs:
        print(("duplicate " if out.duplicate_of else "published ") + out.id)


def _key_holder(redis_url: str, prefix: str, key: str) -> str | None:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        got = client.get(f"{prefix}:unique:{{{key}}}")
    finally:
        client.close()
    return None if got is None else got.decode()


async def test_200_concurrent_publishes_from_4_processes_make_one_task(
    broker: Broker, redis_url: str, r: object
) -> None:
    await broker.declare("default")
    start = time.time() + 4.0  # every process connected and waiting by then
    argv = [sys.executable, __file__, broker.url, redis_url, broker.prefix, "same-key", str(PER_PROCESS)]
    tests = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tests), str(tests / "producer")))}
    procs = [
        await asyncio.create_subprocess_exec(
            *argv, str(start), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        for _ in range(PROCESSES)
    ]
    lines: list[str] = []
    async with asyncio.timeout(60):
        for proc in procs:
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            lines += out.decode().split("\n")
    lines = [line for line in lines if line]
    assert len(lines) == PROCESSES * PER_PROCESS
    published = [line.split()[1] for line in lines if line.startswith("published")]
    assert len(published) == 1, published
    (task_id,) = published
    assert {line.split()[1] for line in lines} == {task_id}  # every duplicate names the one task
    assert await broker.count() == 1
    (msg,) = await broker.take(1)
    assert msg.message_id == task_id
    assert _key_holder(redis_url, broker.prefix, "same-key") == task_id


def _env(broker: Broker, redis_url: str) -> dict[str, str]:
    return {"SLUICE_AMQP_URL": broker.url, "SLUICE_PREFIX": broker.prefix, "SLUICE_REDIS_URL": redis_url}


async def test_cli_publish_unique_key(broker: Broker, redis_url: str, r: object) -> None:
    env = _env(broker, redis_url)
    first = await run_cli("publish", "demo.echo", "--unique-key", "nightly", "--unique-for", "10m", env=env)
    assert first.code == 0, first.err
    (task_id,) = first.out.split()
    again = await run_cli("publish", "demo.echo", "--unique-key", "nightly", "--count", "3", env=env)
    assert again.code == 0, again.err
    assert again.out.split() == [task_id] * 3  # the task to follow, once per input
    assert f"duplicate of {task_id}" in again.err
    assert "published 0, failed 0, republished 0, duplicates 3" in again.err
    as_json = await run_cli("publish", "demo.echo", "--unique-key", "nightly", "--json", env=env)
    doc = json.loads(as_json.out)
    assert doc["ids"] == []
    assert doc["duplicates"] == 1
    assert doc["duplicate_of"] == [{"where": "--payload", "duplicate_of": task_id}]
    assert await broker.count() == 1
    # the key expires with --unique-for: 10 minutes
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    ttl = client.pttl(f"{broker.prefix}:unique:{{nightly}}")
    client.close()
    assert 590_000 < ttl <= 600_000
    # the task ends (written as its worker would, releasing the key): the key is free again
    redis = Redis.from_url(redis_url)
    async with Tracker(redis, broker.prefix, worker="test:1") as tracker:
        await tracker.ended(task_id, state=State.SUCCEEDED, attempt=1, unique_key="nightly")
    await redis.aclose()
    after = await run_cli("publish", "demo.echo", "--unique-key", "nightly", env=env)
    assert after.code == 0, after.err
    assert after.out.split() != [task_id]
    assert await broker.count() == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--unique-for", "10s"],
        ["--unique-release", "end"],
        ["--unique-key", "k", "--unique-release", "sometimes"],
        ["--unique-key", "k", "--unique-for", "0s"],
        ["--unique-key", "k", "--unique-for", "31d"],
        ["--unique-key", "k", "--unique-for", "soon"],
    ],
)
async def test_cli_bad_unique_options_exit_2(args: list[str], broker: Broker) -> None:
    r = await run_cli("publish", "demo.echo", *args, env=_env(broker, "redis://127.0.0.1:6379/0"))
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert "Traceback" not in r.err


async def test_cli_unique_key_with_redis_down_publishes_nothing(broker: Broker) -> None:
    await broker.declare("default")
    env = {**_env(broker, "redis://127.0.0.1:1/0")}  # nothing listens on port 1
    r = await run_cli("publish", "demo.echo", "--unique-key", "k", env=env)
    assert r.code == 1, r.err
    assert "sluice: error: --payload: unique key 'k' cannot be decided" in r.err
    assert "published 0, failed 1" in r.err
    assert r.out == ""
    assert await broker.count() == 0


@pytest.fixture
def refusing(unique: str) -> Iterator[str]:
    """The test's (classic) default queue refuses every publish: max-length 0, reject-publish (nack)."""
    name = f"{unique}-refuse"
    definition = '{"max-length": 0, "overflow": "reject-publish"}'
    subprocess.run(
        [
            *rabbitmqctl_argv(),
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            name,
            rf"^{unique}\.q\.default$",
            definition,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield name
    finally:
        subprocess.run([*rabbitmqctl_argv(), "-q", "clear_policy", name], capture_output=True, timeout=60)


async def test_a_refused_publish_leaves_the_key_free(
    broker: Broker, redis_url: str, r: object, refusing: str, tmp_path: Path
) -> None:
    broker.queue_type = "classic"
    await broker.declare("default")
    assert policy_applied(broker.topology.queue("default"), refusing)
    env = {"SLUICE_REDIS_URL": redis_url, "SLUICE_QUEUE_TYPE": "classic"}
    body = {"task": "demo.echo", "unique_key": "refused"}
    async with running_producer(broker, tmp_path / "producer.log", env=env) as server, server.client() as c:
        answer = await c.post("/v1/tasks", json=body)
        assert answer.status_code == 503, answer.text
        assert _key_holder(redis_url, broker.prefix, "refused") is None
        batch = await c.post("/v1/tasks/batch", json={"tasks": [body, {**body, "unique_key": "b2"}]})
        assert batch.status_code == 503, batch.text
        assert len(batch.json()["failed"]) == 2
        assert _key_holder(redis_url, broker.prefix, "refused") is None
        assert _key_holder(redis_url, broker.prefix, "b2") is None
        cli = await run_cli(
            "publish",
            "demo.echo",
            "--unique-key",
            "refused",
            "--give-up-after",
            "0",
            env={**_env(broker, redis_url), "SLUICE_QUEUE_TYPE": "classic"},
        )
        assert cli.code == 1, cli.err
        assert _key_holder(redis_url, broker.prefix, "refused") is None
        assert await broker.count() == 0  # (the producer's exit deletes the test's queues)


if __name__ == "__main__":
    amqp, redis_url, prefix, key, n, at = sys.argv[1:7]
    asyncio.run(_publish_at(amqp, redis_url, prefix, key, int(n), float(at)))
