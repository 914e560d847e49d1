"""Three ``sluice worker`` processes on the 3-node RabbitMQ cluster (``SLUICE_AMQP_URL`` with the three
URLs), fed by a confirming :class:`~sluice.publisher.Publisher` while the cluster loses nodes:

* kill -9 of the node that leads the work queue (a quorum queue), then the node started again;
* a rolling restart: each node in turn stopped (``rabbitmqctl stop``) and started again, the next one only
  once three nodes run and the queue's three members are online.

Each time every confirmed task runs (its id lands in a Redis set: counted by id, a redelivery counted once),
the publisher reports exactly what it could not get confirmed, no worker dies (each one is still running
after the churn and exits 0 on SIGTERM), processing resumes within ``RESUME_BOUND`` seconds of the
kill, and every worker's consumer is back: the queue has three consumers again, and each of the three
worker processes runs tasks published after the blow (runs counted per process id; the nodes each worker
is connected to are read from its sockets, printed before and after). The workers' side effects go to the
machine's standalone Redis, apart from the cluster under test.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis as redis_sync

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from support.clusters import RabbitCluster
from support.queues import queue_state
from support.waiting import eventually, wait_until
from support.workers import WorkerProcess, stop_all, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HERE = Path(__file__).resolve().parent
RESUME_BOUND = 30.0  # seconds from the kill to a task published after it having run
BEFORE = 300  # confirmed tasks before the first blow
AFTER = 300  # confirmed tasks published after the last blow, then the load stops


class Load:
    """A publisher publishing ``cluster.record`` tasks until stopped, recording what was confirmed."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.confirmed: list[str] = []
        self.unconfirmed: dict[str, str] = {}
        self.mark: int | None = None  # len(confirmed) at the last blow
        self.runs_at_mark: dict[int, int] = {}  # worker pid -> tasks it had run at the last blow
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            msg = TaskMessage("cluster.record", {})
            try:
                await self.publisher.publish(msg)
            except Exception as e:  # every failure is reported: the test counts them
                self.unconfirmed[msg.id] = f"{type(e).__name__}: {str(e)[:80]}"
                await asyncio.sleep(0.05)
                continue
            self.confirmed.append(msg.id)
            if self.mark is not None and len(self.confirmed) - self.mark >= AFTER:
                self.stop.set()
            await asyncio.sleep(0.005)


def _seen(r: redis_sync.Redis, prefix: str) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in r.smembers(f"{prefix}:seen")}


def _runs_by_worker(r: redis_sync.Redis, prefix: str) -> dict[int, int]:
    """Worker pid -> tasks it ran (cluster_tasks counts them per process)."""
    return {int(k): int(v) for k, v in r.hgetall(f"{prefix}:by_pid").items()}


def _worker_nodes(cluster: RabbitCluster, workers: list[WorkerProcess]) -> dict[int, list[int]]:
    """Worker pid -> the cluster nodes its AMQP connections are on (its established sockets, from ss)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    pids = {w.proc.pid for w in workers}
    nodes: dict[int, list[int]] = {pid: [] for pid in pids}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 5:
            continue
        port = int(cols[3].rsplit(":", 1)[1])
        for pid in (int(p) for p in re.findall(r"pid=(\d+)", line)):
            if pid in pids and port in cluster.ports:
                nodes[pid].append(cluster.node_of_port(port))
    return {pid: sorted(ns) for pid, ns in nodes.items()}


async def _under_load(
    cluster: RabbitCluster,
    unique: str,
    redis_url: str,
    r: redis_sync.Redis,
    tmp_path: Path,
    blow: Callable[[str, list[WorkerProcess]], Awaitable[None]],
) -> tuple[Load, list[WorkerProcess]]:
    """Three workers and a publisher; ``blow(queue, workers)`` once BEFORE tasks are confirmed; then AFTER
    more."""
    env = worker_env(cluster.amqp_url, redis_url, unique, HERE, SLUICE_LOG_LEVEL="INFO")
    argv = ["--tasks", "cluster_tasks", "--concurrency", "32", "--prefetch", "64"]
    settings = Settings(amqp_url=cluster.amqp_url, prefix=unique, connect_timeout=10, publish_timeout=15)
    queue = f"{unique}.q.default"
    async with Publisher(settings, name="g-workers-publisher") as publisher:
        await publisher.ensure_queue("default")
        workers = [WorkerProcess(argv, env, tmp_path / f"w{i}.log") for i in range(3)]
        load = Load(publisher)
        try:
            for w in workers:
                w.wait_consuming(cluster.url(1), queue, consumers=3, within=60)
            runner = asyncio.create_task(load.run())
            await eventually(lambda: len(load.confirmed) >= BEFORE, within=120, what="load before the blow")
            try:
                await blow(queue, workers)
            except AssertionError as e:
                kinds = sorted(set(load.unconfirmed.values()))[:4]
                raise AssertionError(
                    f"{e}; the load: {len(load.confirmed)} confirmed, {len(load.unconfirmed)} unconfirmed "
                    f"{kinds}; {len(_seen(r, unique))} run"
                ) from None
            load.mark = len(load.confirmed)
            load.runs_at_mark = _runs_by_worker(r, unique)
            await asyncio.wait_for(load.stop.wait(), 180)
            await runner
        except BaseException:
            stop_all(workers)
            raise
    return load, workers


def _check(
    cluster: RabbitCluster, load: Load, workers: list[WorkerProcess], r: redis_sync.Redis, unique: str
) -> None:
    logs = "\n".join(f"--- {w.log.name}\n{w.stderr()[-3000:]}" for w in workers)
    alive = [w.proc.poll() is None for w in workers]
    confirmed = set(load.confirmed)
    wait_until(lambda: confirmed <= _seen(r, unique), 120, "every confirmed task run")
    consumers = (queue_state(cluster.url(1), f"{unique}.q.default") or (0, 0))[1]
    per_worker = _runs_by_worker(r, unique)
    after = {
        w.proc.pid: per_worker.get(w.proc.pid, 0) - load.runs_at_mark.get(w.proc.pid, 0) for w in workers
    }
    print(f"after the blow: {consumers} consumers on the queue; tasks run per worker pid {after}")
    codes = stop_all(workers)
    runs = int(r.get(f"{unique}:runs") or 0)
    print(
        f"{len(confirmed)} confirmed, {len(load.unconfirmed)} unconfirmed "
        f"({sorted(set(load.unconfirmed.values()))[:3]}); {runs} runs of {len(_seen(r, unique))} distinct; "
        f"{load.publisher.renewals} publisher channel(s) renewed"
    )
    assert alive == [True, True, True], logs
    assert codes == [0, 0, 0], logs
    assert set(per_worker) <= set(after), per_worker  # only the three workers ran tasks
    assert consumers == 3, logs  # every worker's consumer is back on the queue
    assert all(n > 0 for n in after.values()), (after, logs)  # ... and gets deliveries
    # nothing ran that was not published (an unconfirmed publish may still have been enqueued)
    assert _seen(r, unique) <= confirmed | set(load.unconfirmed)


async def _more_run(r: redis_sync.Redis, unique: str, n: int, what: str) -> None:
    """Until ``n`` more distinct tasks than now have run (within RESUME_BOUND)."""
    before = len(_seen(r, unique))
    await eventually(lambda: len(_seen(r, unique)) > before + n, within=RESUME_BOUND, what=what)


async def _rejoined(cluster: RabbitCluster, queue: str, via: int) -> None:
    wait_until(lambda: len(cluster.running_nodes(via=via)) == 3, 180, "three running nodes")
    await eventually(
        lambda: len(cluster.queue_leader(queue, via=via)[1]) == 3,
        within=180,
        what="the queue's three members online",
        every=1.0,
    )


async def test_three_workers_lose_nothing_when_the_queue_leader_is_killed(
    rabbit_cluster: RabbitCluster, unique: str, redis_url: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    resumed: list[float] = []

    async def kill_leader(queue: str, workers: list[WorkerProcess]) -> None:
        leader, online = rabbit_cluster.queue_leader(queue, via=1)
        assert len(online) == 3, online
        before = _worker_nodes(rabbit_cluster, workers)
        await asyncio.to_thread(rabbit_cluster.kill, leader)
        killed = time.monotonic()
        survivor = next(n for n in (1, 2, 3) if n != leader)
        await _more_run(r, unique, 50, "tasks running again")
        resumed.append(time.monotonic() - killed)
        print(f"killed node {leader} (the queue's leader): tasks ran again {resumed[0]:.1f}s after")
        # every worker has connections again, none on the dead node
        await eventually(
            lambda: all(ns and leader not in ns for ns in _worker_nodes(rabbit_cluster, workers).values()),
            within=RESUME_BOUND,
            what="every worker connected to a surviving node",
        )
        print(
            f"workers' nodes (pid: nodes) before the kill {before}, after {_worker_nodes(rabbit_cluster, workers)}"
        )
        await asyncio.to_thread(rabbit_cluster.up)
        await _rejoined(rabbit_cluster, queue, via=survivor)

    load, workers = await _under_load(rabbit_cluster, unique, redis_url, r, tmp_path, kill_leader)
    _check(rabbit_cluster, load, workers, r, unique)
    assert resumed and resumed[0] < RESUME_BOUND


async def test_a_rolling_restart_of_the_three_nodes_loses_nothing(
    rabbit_cluster: RabbitCluster, unique: str, redis_url: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    async def rolling(queue: str, workers: list[WorkerProcess]) -> None:
        for n in (1, 2, 3):
            started = time.monotonic()
            await asyncio.to_thread(rabbit_cluster.ctl, n, "stop", timeout=120)
            await _more_run(r, unique, 20, "tasks run with a node down")
            await asyncio.to_thread(rabbit_cluster.up)
            await _rejoined(rabbit_cluster, queue, via=n % 3 + 1)
            print(f"node {n} stopped, started and rejoined in {time.monotonic() - started:.1f}s")

    load, workers = await _under_load(rabbit_cluster, unique, redis_url, r, tmp_path, rolling)
    _check(rabbit_cluster, load, workers, r, unique)
