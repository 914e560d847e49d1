"""The metrics service with real processes sending snapshots over the real RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
import redis as redis_sync
from fleet_helpers import HERE, SLUICE, Service, end, start_child, until

from sluice.settings import Settings
from sluice.topology import Topology
from support.workers import WorkerProcess

ALIVE_AFTER = 2.0  # the service fixture's --alive-after
INTERVAL = 0.5  # its --interval (the sampler), also the child's snapshot interval


def done(svc: Service, outcome: str) -> int:
    return int(svc.summary()["totals"]["completed"][outcome])


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `sluice` console script with ``args`` (wide tables: 250 columns), its output captured."""
    return subprocess.run(
        [SLUICE, *args], env={**env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=30
    )


def test_counts_match_and_a_killed_worker_stops_being_alive(service: Service, env: dict[str, str]) -> None:
    ok, failed, published = 37, 5, 42
    worker = start_child(env, "worker", ok, failed, 0)
    producer = start_child(env, "producer", 0, 0, published)
    try:
        doc = until(lambda: (d := service.summary())["workers_alive"] == 1 and d["totals"]["published"] and d)
        assert doc["totals"]["completed"]["success"] == ok
        assert doc["totals"]["completed"]["failed"] == failed
        assert doc["totals"]["published"] == published
        assert doc["in_progress"] == 2.0
        kinds = sorted(p["kind"] for p in doc["processes"] if p["alive"])
        assert kinds == ["producer", "worker"]
        got = service.samples()
        prefix = env["SLUICE_PREFIX"]
        assert got[("sluice_tasks_completed_total", (("outcome", "success"), ("task", "demo.echo")))] == ok
        assert got[("sluice_tasks_completed_total", (("outcome", "failed"), ("task", "demo.fail")))] == failed
        assert got[("sluice_tasks_published_total", (("queue", f"{prefix}.q.default"),))] == published
        assert got[("sluice_task_run_seconds_count", (("task", "demo.echo"),))] == ok
        assert (
            got[("sluice_task_queue_wait_seconds_count", (("queue", f"{prefix}.q.default"),))] == ok + failed
        )
        assert got[("sluice_workers_alive", ())] == 1

        worker.kill()  # no final snapshot: only silence tells
        killed = time.monotonic()
        until(lambda: service.summary()["workers_alive"] == 0, seconds=10, every=0.1)
        took = time.monotonic() - killed
        # bound: alive_after since its last snapshot (sent < 0.5 s before the kill) + one sampler period
        assert took <= ALIVE_AFTER + 2 * INTERVAL + 0.5, took
        after = service.summary()
        assert after["totals"]["completed"]["success"] == ok  # a dead worker's counts stay
        assert service.samples()[("sluice_processes_alive", (("kind", "producer"),))] == 1

        producer.send_signal(signal.SIGTERM)  # a clean stop: its final snapshot retires it at once
        assert producer.wait(10) == 0
        until(lambda: not any(p["alive"] for p in service.summary()["processes"]), seconds=5)
        assert service.summary()["totals"]["published"] == published
    finally:
        end(worker)
        end(producer)


@pytest.fixture
def big_keyspace(topology: Settings) -> Iterator[int]:
    """800,000 keys under the test's prefix (task records of a busy fleet, say), deleted after: the
    metrics service's SCANs for breakers and freezes take seconds over them."""
    n = 800_000
    client = redis_sync.Redis.from_url(topology.redis_url)
    head = f"{topology.prefix}:pad:"
    try:
        for start in range(0, n, 10_000):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, start + 10_000):
                    pipe.set(f"{head}{i}", "x", ex=600)
                pipe.execute()
        yield n
    finally:
        for start in range(0, n, 10_000):
            client.delete(*(f"{head}{i}" for i in range(start, start + 10_000)))
        client.close()


@pytest.mark.slow
async def test_queue_ages_keep_their_bound_over_a_big_redis_keyspace(
    big_keyspace: int, service: Service, topology: Settings
) -> None:
    """The Redis reads (SCANs over the whole keyspace) run apart from the queue sampler: they must not
    stretch the queue age's upper bound (it did: 6.3 s for a queue filled 3.6 s before)."""
    await test_queue_depth_and_age_follow_a_filled_queue(service, topology)


async def test_queue_depth_and_age_follow_a_filled_queue(service: Service, topology: Settings) -> None:
    topo = Topology.from_settings(topology)
    work = topo.queue(topology.default_queue)

    def row() -> dict[str, object] | None:
        return next((q for q in service.summary()["queues"] if q["queue"] == work), None)

    until(lambda: (r := row()) is not None and r["messages"] == 0 and r["oldest_age"] == 0.0)
    n = 20
    async with await aio_pika.connect(topology.amqp_url) as conn:
        channel = await conn.channel()
        tasks = await channel.get_exchange(topo.tasks_exchange)
        filled = time.monotonic()
        for i in range(n):
            await tasks.publish(
                aio_pika.Message(b"{}", message_id=f"m{i}"), routing_key=topology.default_queue
            )
        first = until(lambda: (r := row()) is not None and r["messages"] == n and r)
        age1 = float(first["oldest_age"])  # type: ignore[arg-type]
        second = until(lambda: (r := row()) is not None and float(r["oldest_age"]) >= age1 + 1.0 and r)  # type: ignore[arg-type]
        assert second["messages"] == n
        age2 = float(second["oldest_age"])  # type: ignore[arg-type]
        # an upper bound that grows with the wait: never more than the time since the fill + one sample
        assert age2 <= time.monotonic() - filled + INTERVAL + 0.5
        samples = service.samples()
        assert samples[("sluice_queue_messages", (("queue", work),))] == n
        assert samples[("sluice_queue_oldest_age_seconds", (("queue", work),))] >= age2
        queue = await channel.get_queue(work)
        await queue.purge()
        until(lambda: (r := row()) is not None and r["messages"] == 0 and r["oldest_age"] == 0.0)


def test_sluice_status_table_json_and_watch(service: Service, env: dict[str, str]) -> None:
    child = start_child(env, "worker", 3, 1, 0)
    try:
        until(lambda: service.summary()["workers_alive"] == 1)
        run = subprocess.run(
            [SLUICE, "status", "--url", service.url, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        doc = json.loads(run.stdout)
        assert doc["totals"]["completed"]["success"] == 3 and doc["workers_alive"] == 1
        table = sluice(env, "status", "--url", service.url)
        assert table.returncode == 0, table.stderr
        prefix = env["SLUICE_PREFIX"]
        assert f"{prefix}.q.default" in table.stdout and f"{prefix}.dlq" in table.stdout
        assert "workers alive 1" in table.stdout and "alive" in table.stdout

        watch = subprocess.Popen(
            [SLUICE, "status", "--url", service.url, "--watch", "--json", "--interval", "0.3"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(3)]  # three refreshes
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0
        assert all(json.loads(line)["prefix"] == prefix for line in lines)
        watch.stdout.close()
    finally:
        end(child)

    bad = subprocess.run(
        [SLUICE, "status", "--url", "http://127.0.0.1:9"], env=env, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith(
        "sluice: error: cannot reach the metrics service at http://127.0.0.1:9/api/summary"
    )
    assert bad.stderr.count("\n") == 1
    wrong = subprocess.run(
        [SLUICE, "status", "--url", "nonsense"], env=env, capture_output=True, text=True, timeout=30
    )
    assert (wrong.returncode, wrong.stderr) == (
        1,
        "sluice: error: bad metrics service URL 'nonsense': use http://HOST:PORT\n",
    )


def test_sluice_publish_reports_what_it_published(service: Service, env: dict[str, str]) -> None:
    """The CLI is a short-lived producer: its one final snapshot carries the count."""
    done = subprocess.run(
        [SLUICE, "publish", "demo.echo", "--count", "23", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["published"] == 23
    until(lambda: service.summary()["totals"]["published"] == 23)
    prefix = env["SLUICE_PREFIX"]
    assert service.samples()[("sluice_tasks_published_total", (("queue", f"{prefix}.q.default"),))] == 23
    gone = service.summary()["gone"]
    assert [(p["kind"], p["stopped"], p["published"]) for p in gone] == [("producer", "stopped", 23)]


def test_a_real_worker_publish_n_fail_m(service: Service, env: dict[str, str], tmp_path: Path) -> None:
    """`sluice publish` N ok and M failing tasks, a real `sluice worker` runs them: the metrics say N and M,
    and once the worker is killed it stops being alive within the heartbeat bound."""
    n, m = 40, 7
    wenv = {**env, "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])}
    worker = WorkerProcess(["--tasks", "fleet_tasks", "--concurrency", "8"], wenv, tmp_path / "worker.log")
    try:
        until(lambda: service.summary()["workers_alive"] == 1, seconds=30)
        for name, count in (("fleet.ok", n), ("fleet.fail", m)):
            sent = subprocess.run(
                [SLUICE, "publish", name, "-p", '{"n": 1}', "--count", str(count), "--tasks", "fleet_tasks"],
                env=wenv,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
        doc = until(lambda: (d := service.summary())["totals"]["completed"]["failed"] == m and d, seconds=30)
        assert doc["totals"]["completed"]["success"] == n
        assert doc["totals"]["published"] == n + m
        prefix = env["SLUICE_PREFIX"]
        got = service.samples()
        assert got[("sluice_tasks_completed_total", (("outcome", "success"), ("task", "fleet.ok")))] == n
        assert got[("sluice_tasks_completed_total", (("outcome", "failed"), ("task", "fleet.fail")))] == m
        assert got[("sluice_task_run_seconds_count", (("task", "fleet.ok"),))] == n
        assert got[("sluice_task_queue_wait_seconds_count", (("queue", f"{prefix}.q.default"),))] == n + m
        until(lambda: service.samples().get(("sluice_dlq_messages", ())) == m)

        worker.kill()
        killed = time.monotonic()
        until(lambda: service.summary()["workers_alive"] == 0, seconds=10, every=0.1)
        assert time.monotonic() - killed <= ALIVE_AFTER + 1.0 + INTERVAL + 0.5  # worker snapshots every 1 s
        assert service.summary()["totals"]["completed"]["success"] == n
    finally:
        worker.kill()


def test_sluice_status_shows_the_schedules_and_their_leader(service: Service, env: dict[str, str]) -> None:
    """A schedule added with `sluice schedule add` appears in `sluice status` (JSON and table), with its
    next fire, its fleet-wide counts (fires, caught up, skipped: written here as a scheduler's RECORD and
    SKIP would) and the scheduler leader (none: no scheduler runs here)."""
    name = f"status-{env['SLUICE_PREFIX']}"
    add = sluice(env, "schedule", "add", name, "--task", "fleet.noop", "--every", "5m")
    assert add.returncode == 0, add.stderr
    state = f"{env['SLUICE_PREFIX']}:{{sched}}:state:{name}"
    with redis_sync.Redis.from_url(env["SLUICE_REDIS_URL"]) as r:
        r.hset(state, mapping={"fires": 41, "caught_up": 7, "skipped": 23})
    try:

        def listed() -> dict[str, object] | None:
            run = sluice(env, "status", "--url", service.url, "--json")
            assert run.returncode == 0, run.stderr
            doc = json.loads(run.stdout)
            rows = [r for r in doc["scheduler"]["schedules"] if r["name"] == name]
            # the service reads Redis on its own interval: a read between the add and the HSET lists
            # the schedule with no counts yet, so wait for one that has them
            if not rows or rows[0]["fires"] == 0:
                return None
            return {"leader": doc["scheduler"]["leader"], **rows[0]}

        got = until(listed)
        assert got["task"] == "fleet.noop" and got["spec"] == "every 5m" and got["leader"] is None
        assert (got["fires"], got["caught_up"], got["skipped"]) == (41, 7, 23)
        assert isinstance(got["next_fire"], str) and got["next_fire"].endswith("Z")
        table = sluice(env, "status", "--url", service.url)
        assert table.returncode == 0, table.stderr
        assert "schedules (leader: NONE" in table.stdout and name in table.stdout
        assert str(got["next_fire"])[:16] in table.stdout
        assert "caught up" in table.stdout and "skipped" in table.stdout
        (line,) = [ln for ln in table.stdout.splitlines() if name in ln]
        assert [c.strip() for c in line.split("│")[7:10]] == ["41", "7", "23"], line
    finally:
        rm = sluice(env, "schedule", "rm", name)
        assert rm.returncode == 0, rm.stderr
