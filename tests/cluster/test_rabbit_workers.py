"""Three ``sluice worker`` processes on the 3-node RabbitMQ cluster (``SLUICE_AMQP_URL`` with the three
URLs), fed by a confirming :class:`~sluice.publisher.Publisher` while the cluster loses nodes:

* kill -9 of the node that leads the work queue (a quorum queue), then the node started again;
* a rolling restart: each node in turn stopped (``rabbitmqctl stop``) and started again, the next one only
  once three nodes run and the queue's three members are online.

Each time every confirmed task runs (its id lands in a Redis set: counted by id, a redelivery counted once),
the publisher reports exactly what it could not get confirmed, no worker dies (each one is still running
after the churn and exits 0 on SIGTERM), and processing resumes within ``RESUME_BOUND`` seconds of the
kill. The workers' side effects go to the machine's standalone Redis, apart from the cluster under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis as redis_sync

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from support.clusters import RabbitCluster
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


async def _under_load(
    cluster: RabbitCluster,
    unique: str,
    redis_url: str,
    r: redis_sync.Redis,
    tmp_path: Path,
    blow: Callable[[str], Awaitable[None]],
) -> tuple[Load, list[WorkerProcess]]:
    """Three workers and a publisher; ``blow(queue)`` once BEFORE tasks are confirmed; then AFTER more."""
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
                await blow(queue)
            except AssertionError as e:
                kinds = sorted(set(load.unconfirmed.values()))[:4]
                raise AssertionError(
                    f"{e}; the load: {len(load.confirmed)} confirmed, {len(load.unconfirmed)} unconfirmed "
                    f"{kinds}; {len(_seen(r, unique))} run"
                ) from None
            load.mark = len(load.confirmed)
            await asyncio.wait_for(load.stop.wait(), 180)
            await runner
        except BaseException:
            stop_all(workers)
            raise
    return load, workers


def _check(load: Load, workers: list[WorkerProcess], r: redis_sync.Redis, unique: str) -> None:
    logs = "\n".join(f"--- {w.log.name}\n{w.stderr()[-3000:]}" for w in workers)
    alive = [w.proc.poll() is None for w in workers]
    confirmed = set(load.confirmed)
    wait_until(lambda: confirmed <= _seen(r, unique), 120, "every confirmed task run")
    codes = stop_all(workers)
    runs = int(r.get(f"{unique}:runs") or 0)
    print(
        f"{len(confirmed)} confirmed, {len(load.unconfirmed)} unconfirmed "
        f"({sorted(set(load.unconfirmed.values()))[:3]}); {runs} runs of {len(_seen(r, unique))} distinct; "
        f"{load.publisher.renewals} publisher channel(s) renewed"
    )
    assert alive == [True, True, True], logs
    assert codes == [0, 0, 0], logs
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

    async def kill_leader(queue: str) -> None:
        leader, online = rabbit_cluster.queue_leader(queue, via=1)
        assert len(online) == 3, online
        await asyncio.to_thread(rabbit_cluster.kill, leader)
        killed = time.monotonic()
        survivor = next(n for n in (1, 2, 3) if n != leader)
        await _more_run(r, unique, 50, "tasks running again")
        resumed.append(time.monotonic() - killed)
        print(f"killed node {leader} (the queue's leader): tasks ran again {resumed[0]:.1f}s after")
        await asyncio.to_thread(rabbit_cluster.up)
        await _rejoined(rabbit_cluster, queue, via=survivor)

    load, workers = await _under_load(rabbit_cluster, unique, redis_url, r, tmp_path, kill_leader)
    _check(load, workers, r, unique)
    assert resumed and resumed[0] < RESUME_BOUND


async def test_a_rolling_restart_of_the_three_nodes_loses_nothing(
    rabbit_cluster: RabbitCluster, unique: str, redis_url: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    async def rolling(queue: str) -> None:
        for n in (1, 2, 3):
            started = time.monotonic()
            await asyncio.to_thread(rabbit_cluster.ctl, n, "stop", timeout=120)
            await _more_run(r, unique, 20, "tasks run with a node down")
            await asyncio.to_thread(rabbit_cluster.up)
            await _rejoined(rabbit_cluster, queue, via=n % 3 + 1)
            print(f"node {n} stopped, started and rejoined in {time.monotonic() - started:.1f}s")

    load, workers = await _under_load(rabbit_cluster, unique, redis_url, r, tmp_path, rolling)
    _check(load, workers, r, unique)
