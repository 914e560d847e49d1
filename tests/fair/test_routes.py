"""Where a fair task goes, through each door (real RabbitMQ): the installed ``sluice publish`` (also
with ``--delay``, through a delay tier), the HTTP producer (``sluice producer --tasks``), the library's
``Publisher``; a worker's retry comes back to the sub-queue it came from, the dead letter names it and
``sluice dlq replay`` sends it back there. Each task lands in ``{prefix}.q.fairq.f{crc32(tenant) % 8}``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import fair_tasks
import httpx
import pytest
import redis
from fair_tasks import SHARDS

from sluice.fair import shard_of
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.tasks import Registry
from support.ports import free_port
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


def _ready(amqp_url: str, prefix: str, queue: str) -> int:
    state = queue_state(amqp_url, f"{prefix}.q.{queue}")
    return -1 if state is None else state[0]


def _where(amqp_url: str, prefix: str) -> dict[str, int]:
    """Ready messages per queue of the fair queue (the queue itself and each sub-queue), non-empty only."""
    names = ["fairq", *(f"fairq.f{i}" for i in range(SHARDS))]
    return {q: n for q in names if (n := _ready(amqp_url, prefix, q)) > 0}


def _sluice(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([SLUICE, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"sluice {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def _payload(record: str, tenant: str, **extra: object) -> str:
    return json.dumps({"record": record, "tenant": tenant, **extra})


def test_the_cli_routes_each_tenant_to_its_sub_queue_also_through_a_delay_tier(
    amqp_url: str, redis_url: str, prefix: str
) -> None:
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    tenants = ["A", "B", "acme", "globex", "42"]
    lines = "".join(_payload(f"{prefix}:r", t) + "\n" for t in tenants)
    _sluice(env, "publish", "fair.work", "--tasks", "fair_tasks", "-", stdin=lines)
    expected: dict[str, int] = {}
    for t in tenants:
        q = f"fairq.f{shard_of(t, SHARDS)}"
        expected[q] = expected.get(q, 0) + 1
    wait_until(lambda: _where(amqp_url, prefix) == expected, 10, f"the tasks in {expected}")
    # delayed: through the 1 s tier, then back to the tenant's sub-queue by the requeue binding
    _sluice(
        env,
        "publish",
        "fair.work",
        "--tasks",
        "fair_tasks",
        "--delay",
        "1s",
        "--payload",
        _payload("d", "delayed"),
    )
    q = f"fairq.f{shard_of('delayed', SHARDS)}"
    expected[q] = expected.get(q, 0) + 1
    wait_until(lambda: _where(amqp_url, prefix) == expected, 15, f"the delayed task in {q}: {expected}")


def test_a_publisher_that_does_not_know_the_task_sends_it_to_the_queue_itself(
    amqp_url: str, redis_url: str, prefix: str
) -> None:
    """Without ``--tasks`` the CLI cannot know ``fair.work`` is fair: the task goes to ``fairq``, which a
    worker consumes beside the sub-queues (one more share, not fair among its tenants: docs/policies.md)."""
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    payload = _payload(f"{prefix}:r", "A")
    _sluice(env, "publish", "fair.work", "--queue", "fairq", "--create-queue", "--payload", payload)
    wait_until(lambda: _where(amqp_url, prefix) == {"fairq": 1}, 10, "the task in fairq")


async def test_the_library_publisher_routes_fair_tasks(amqp_url: str, prefix: str) -> None:
    registry = Registry()
    registry.add_module(fair_tasks)
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    async with Publisher(settings, fair=registry.fair_routes()) as pub:
        for tenant in ("lib", "lib", "other"):
            msg = TaskMessage(task="fair.work", payload={"record": "p", "tenant": tenant}, queue="fairq")
            await pub.publish(msg)
    expected: dict[str, int] = {}
    for tenant in ("lib", "lib", "other"):
        q = f"fairq.f{shard_of(tenant, SHARDS)}"
        expected[q] = expected.get(q, 0) + 1
    assert _where(amqp_url, prefix) == expected


def test_the_http_producer_routes_fair_tasks(
    amqp_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    log = tmp_path / "producer.log"
    with log.open("wb") as out:
        producer = subprocess.Popen(
            [SLUICE, "producer", "--port", str(port), "--tasks", "fair_tasks"],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            def ready() -> bool:
                assert producer.poll() is None, log.read_text()
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, 30, "the producer ready")
            batch = [{"task": "fair.work", "payload": {"record": "h", "tenant": t}} for t in ("http", "web")]
            for task in batch:
                answer = http.post("/v1/tasks", json=task)
                assert answer.status_code == 202, answer.text
    finally:
        producer.terminate()
        producer.wait(30)
    expected: dict[str, int] = {}
    for tenant in ("http", "web"):
        q = f"fairq.f{shard_of(tenant, SHARDS)}"
        expected[q] = expected.get(q, 0) + 1
    wait_until(lambda: _where(amqp_url, prefix) == expected, 10, f"the tasks in {expected}")


@pytest.mark.timeout(180)
def test_a_retry_comes_back_to_its_sub_queue_and_a_replay_too(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    record = f"{prefix}:retry"
    sub = f"fairq.f{shard_of('B', SHARDS)}"
    worker = WorkerProcess(["--tasks", "fair_tasks"], env, tmp_path / "w.log")
    try:
        worker.wait_consuming(amqp_url, f"{prefix}.q.{sub}")
        _sluice(
            env,
            "publish",
            "fair.retried",
            "--tasks",
            "fair_tasks",
            "--payload",
            _payload(record, "B", fail=True),
        )
        wait_until(lambda: _dead(amqp_url, prefix) == 1, 30, "the dead letter")
        assert r.lrange(f"{record}:attempts", 0, -1) == [b"1", b"2"]  # attempt 2 after the 1 s tier
        rows = [json.loads(line) for line in _sluice(env, "dlq", "ls", "--json").splitlines() if line.strip()]
        assert [row["queue"] for row in rows] == [sub], rows  # taken, at attempt 2, from the sub-queue
        assert worker.terminate(timeout=30) == 0, worker.stderr()[-3000:]
    finally:
        worker.kill()
    _sluice(env, "dlq", "replay", "--task", "fair.retried")
    wait_until(lambda: _where(amqp_url, prefix) == {sub: 1}, 10, f"the replayed task in {sub}")


def _dead(amqp_url: str, prefix: str) -> int:
    state = queue_state(amqp_url, f"{prefix}.dlq")
    return 0 if state is None else state[0]


@pytest.mark.timeout(120)
def test_a_burst_worker_runs_every_sub_queue_then_exits(
    amqp_url: str, redis_url: str, prefix: str, r: redis.Redis, tmp_path: Path
) -> None:
    """``sluice worker --burst`` waits for the sub-queues too: it exits 0 once all of them are empty."""
    env = worker_env(amqp_url, redis_url, prefix, HERE)
    record = f"{prefix}:burst"
    tenants = [f"tenant-{i}" for i in range(10)]
    lines = "".join(_payload(record, t, seconds=0.01) + "\n" for t in tenants for _ in range(3))
    _sluice(env, "publish", "fair.work", "--tasks", "fair_tasks", "-", stdin=lines)
    assert len(_where(amqp_url, prefix)) > 1  # spread over several sub-queues
    worker = WorkerProcess(["--tasks", "fair_tasks", "--burst"], env, tmp_path / "w.log")
    assert worker.wait(90) == 0, worker.stderr()[-3000:]
    runs = [int(v) for v in r.hvals(f"{record}:runs")]
    assert len(runs) == 30 and set(runs) == {1}, runs
    assert _where(amqp_url, prefix) == {}
