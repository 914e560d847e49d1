"""A worker stops consuming a queue whose tasks cannot run (issue 14), through real ``sluice worker``
processes (the installed console script) on the real RabbitMQ and Redis:

* a breaker open 30 s on queue ``pz`` under a steady publish load: with ``SLUICE_PAUSE_BLOCKED=false``
  every message published meanwhile cycles through the delay tiers; with pausing (the default) the
  consumer is cancelled (RabbitMQ counts 0 consumers on the queue) and consumes again once the open
  time ends: far fewer copies (both counts printed), every task runs, none dead-lettered, and the
  worker's other queue keeps running while ``pz`` is paused;
* a key frozen by a throttle (a limit without a per-tenant key) pauses its queue, and
  ``sluice limits thaw`` resumes it within the pause's re-read; a freeze of one tenant's key does not
  pause its queue: the other tenant's tasks run meanwhile.

The copies sent to the delay tiers are counted by the broker: a queue of the test's own bound to the
delay exchange with the routing key of the queue's copies (``*.pz``) receives one of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
import redis

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.resilience import KeySpace
from sluice.settings import Settings
from sluice.telemetry import PAUSE_REASONS
from sluice.topology import Topology
from sluice_worker.outcome import BREAKER_OPEN, REASONS, THROTTLED
from sluice_worker.pauses import PAUSE_RECHECK, base_queue
from support.brokerctl import rabbitmqctl_argv
from support.queues import queue_counts
from support.waiting import eventually
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent
OPEN_FOR = 30.0  # the breaker's open time in the measured runs
RATE = 20  # tasks per second published to pz while the breaker is open
PREFETCH = 32


@dataclass
class Stack:
    """The test's prefix, brokers and worker processes."""

    amqp_url: str
    redis_url: str
    prefix: str
    logs: Path
    r: redis.Redis
    channel: aio_pika.abc.AbstractChannel
    workers: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    @property
    def settings(self) -> Settings:
        return Settings(amqp_url=self.amqp_url, redis_url=self.redis_url, prefix=self.prefix)

    @property
    def topo(self) -> Topology:
        return Topology.from_settings(self.settings)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def worker(self, queues: str, **env: str) -> WorkerProcess:
        log = self.logs / f"worker{self.started}.log"
        self.started += 1
        args = ["--tasks", "pause_tasks", "--queues", queues, "--concurrency", "16"]
        w = WorkerProcess(
            [*args, "--prefetch", str(PREFETCH)],
            worker_env(self.amqp_url, self.redis_url, self.prefix, HERE, **env),
            log,
        )
        self.workers.append(w)
        for q in queues.split(","):
            await asyncio.to_thread(w.wait_consuming, self.amqp_url, self.topo.queue(q))
        return w

    async def consumers(self, queue: str) -> int:
        return (await queue_counts(self.channel, self.topo.queue(queue)))[1]

    async def paused(self, queue: str) -> bool:
        return await self.consumers(queue) == 0

    async def dead(self) -> int:
        return (await queue_counts(self.channel, self.topo.dead_queue))[0]

    async def tier_counter(self, queue: str) -> str:
        """A queue of the test's own that receives one copy of each delayed copy of ``queue``'s tasks."""
        delay = await self.topo.declare_delays(self.channel)
        counter = await self.channel.declare_queue(f"{self.prefix}.test.tiers.{time.monotonic_ns()}")
        await counter.bind(delay, routing_key=f"*.{queue}")
        return counter.name

    async def counted(self, counter: str) -> int:
        return (await queue_counts(self.channel, counter))[0]

    async def publish(self, task: str, queue: str, record: str, ns: range, **payload: object) -> None:
        down = self.key("down")
        async with Publisher(self.settings) as pub:
            msgs = (
                TaskMessage(task, {"record": record, "down": down, "n": n, **payload}, queue=queue)
                for n in ns
            )
            assert (await pub.publish_many(msgs)).confirmed == len(ns)

    def ran(self, record: str) -> set[int]:
        return {int(x) for x in self.r.lrange(record, 0, -1)}

    def breaker(self) -> bytes | None:
        got: bytes | None = self.r.hget(KeySpace(self.prefix).key("breaker", "pzbrk"), "state")  # type: ignore[assignment]
        return got

    def sluice(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = worker_env(self.amqp_url, self.redis_url, self.prefix)
        return subprocess.run([SLUICE, *args], env=env, capture_output=True, text=True, timeout=60)

    def stop(self) -> list[int]:
        codes = [w.terminate(timeout=30) for w in self.workers]
        for w in self.workers:
            assert "Traceback" not in w.stderr(), w.stderr()[-3000:]
        self.workers.clear()
        return codes


@pytest.fixture
async def stack(
    amqp_url: str, redis_url: str, unique: str, tmp_path: Path, r: redis.Redis
) -> AsyncIterator[Stack]:
    conn = await aio_pika.connect(amqp_url)
    s = Stack(amqp_url, redis_url, unique, tmp_path, r, await conn.channel())
    try:
        yield s
    finally:
        for w in s.workers:
            w.terminate(timeout=30)
        await conn.close()


@dataclass
class Run:
    """What one 30 s open-breaker run saw."""

    pausing: bool
    copies: int  # copies of pz's tasks sent to the delay tiers
    published: int
    least_consumers: int  # the fewest consumers pz had while the breaker was open
    free_ran_while_paused: bool
    paused_for: float  # seconds pz had no consumer
    total: float  # seconds from the breaker opening to the last task run


async def _open_breaker_run(stack: Stack, pausing: bool) -> Run:
    """One worker consuming pz and pzfree; two failures open pz's breaker for OPEN_FOR seconds while RATE
    tasks a second are published to pz; then every task must run."""
    run = "on" if pausing else "off"
    record, free = stack.key(f"ran.{run}"), stack.key(f"free.{run}")
    stack.r.delete(KeySpace(stack.prefix).key("breaker", "pzbrk"))
    await stack.worker("pz,pzfree", SLUICE_PAUSE_BLOCKED=str(pausing).lower(), PAUSE_OPEN_FOR=str(OPEN_FOR))
    counter = await stack.tier_counter("pz")
    stack.r.set(stack.key("down"), 1)
    await stack.publish("pz.guarded", "pz", record, range(2))  # two failures open the breaker
    await eventually(lambda: stack.breaker() == b"o", 30, "the breaker open")
    opened = time.monotonic()
    stack.r.delete(stack.key("down"))  # the upstream is back: the trial after the open time succeeds
    n, least, paused_at, paused_for, free_ok = 2, 1, None, 0.0, False
    while time.monotonic() - opened < OPEN_FOR - 3:
        tick = time.monotonic()
        await stack.publish("pz.guarded", "pz", record, range(n, n + RATE))
        n += RATE
        consumers = await stack.consumers("pz")
        least = min(least, consumers)
        if consumers == 0 and paused_at is None:
            paused_at = time.monotonic()
            # while pz is paused, the worker's other queue runs: five tasks, each within seconds
            await stack.publish("pz.free", "pzfree", free, range(5))
            await eventually(lambda: stack.ran(free) == set(range(5)), 10, "pzfree's tasks")
            free_ok = await stack.consumers("pz") == 0
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # the publish load's pace
    await eventually(lambda: stack.ran(record) == set(range(n)), 90, f"all {n} pz tasks run")
    total = time.monotonic() - opened
    if paused_at is not None:
        paused_for = time.monotonic() - paused_at
        await eventually(lambda: stack.consumers("pz"), 10, "pz consumed again")
        paused_for = _paused_seconds(stack.workers[-1].stderr()) or paused_for
    assert await stack.consumers("pz") == 1, "pz is consumed once its tasks can run"
    copies = await stack.counted(counter)
    assert stack.stop() == [0]
    assert await stack.dead() == 0, "nothing dead-lettered"
    return Run(pausing, copies, n, least, free_ok, paused_for, total)


def _paused_seconds(log: str) -> float | None:
    """Seconds between the worker's first "pausing" and the "resuming" after it, by their log times."""
    lines = log.splitlines()
    start = next((line for line in lines if "pausing the consumer of queue pz" in line), None)
    end = next((line for line in lines if "resuming the consumer of queue pz" in line), None)
    if start is None or end is None:
        return None
    return _stamp(end) - _stamp(start)


def _stamp(line: str) -> float:
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_an_open_breaker_pauses_its_queue_instead_of_cycling_it_through_the_delay_tiers(
    stack: Stack,
) -> None:
    off = await _open_breaker_run(stack, pausing=False)
    on = await _open_breaker_run(stack, pausing=True)
    print(
        f"\nbreaker open {OPEN_FOR:g} s on pz, {RATE} tasks/s published, prefetch {PREFETCH}:"
        f"\n  pausing off: {off.copies} copies through the delay tiers for {off.published} tasks"
        f" (pz's consumers never below {off.least_consumers}), all run {off.total:.1f} s after the opening"
        f"\n  pausing on:  {on.copies} copies for {on.published} tasks, pz paused ~{on.paused_for:.0f} s"
        f" (0 consumers), pzfree ran meanwhile: {on.free_ran_while_paused}, all run {on.total:.1f} s"
        f" after the opening\n  ratio on/off: {on.copies / max(1, off.copies):.3f}"
    )
    assert off.least_consumers == 1 and off.copies >= off.published - 2, "without pausing: every one cycles"
    assert on.least_consumers == 0 and on.free_ran_while_paused
    assert on.paused_for >= OPEN_FOR / 2
    # with pausing: the deliveries prefetched when it paused, those refused while the trial ran, and
    # the two that opened it: a few prefetch windows at most, against one per task published
    assert on.copies <= 3 * PREFETCH + 10 and on.copies * 5 < off.copies, (on, off)


@pytest.mark.timeout(180)
async def test_a_frozen_key_pauses_its_queue_and_a_tenants_frozen_key_does_not(stack: Stack) -> None:
    limited, tenants = stack.key("limited"), stack.key("tenants")
    await stack.worker("pzlim,pzten", PAUSE_FREEZE="60")
    stack.r.set(stack.key("down"), 1)
    await stack.publish("pz.limited", "pzlim", limited, range(5))  # a throttle freezes pz.limited 60 s
    await stack.publish("pz.tenant", "pzten", tenants, range(5), tenant="a")  # and pz.tenant:a
    await eventually(lambda: stack.paused("pzlim"), 30, "pzlim paused")
    frozen = {
        row["key"] for row in json.loads(stack.sluice("limits", "ls", "--json").stdout) if row["frozen_until"]
    }
    assert {"pz.limited", "pz.tenant:a"} <= frozen, frozen
    stack.r.delete(stack.key("down"))
    # tenant a's freeze holds: its queue is consumed all the same, and tenant b's tasks run meanwhile
    await stack.publish("pz.tenant", "pzten", tenants, range(100, 105), tenant="b")
    await eventually(lambda: stack.ran(tenants) >= set(range(100, 105)), 20, "tenant b's tasks")
    assert await stack.consumers("pzten") == 1 and await stack.consumers("pzlim") == 0
    assert not stack.ran(tenants) & set(range(5)) and not stack.ran(limited), "the frozen ones wait"
    # an early thaw: the paused queue is consumed again within the pause's re-read, its tasks run
    assert stack.sluice("limits", "thaw", "pz.limited").returncode == 0
    thawed = time.monotonic()
    await eventually(lambda: stack.consumers("pzlim"), PAUSE_RECHECK + 10, "pzlim consumed again")
    resumed_after = time.monotonic() - thawed
    await eventually(lambda: stack.ran(limited) == set(range(5)), 30, "pz.limited's tasks")
    assert stack.sluice("limits", "thaw", "pz.tenant:a").returncode == 0
    await eventually(lambda: stack.ran(tenants) == {*range(5), *range(100, 105)}, 30, "tenant a's tasks")
    print(
        f"\npzlim consumed again {resumed_after:.1f} s after sluice limits thaw (re-read every {PAUSE_RECHECK:g} s)"
    )
    log = stack.workers[0].stderr()
    assert "pausing the consumer of queue pzlim" in log and "(throttled" in log
    assert "queue pzten" not in log, "a tenant's freeze never pauses its queue"
    assert stack.stop() == [0]
    assert await stack.dead() == 0


def _close_consuming_connection(pid: int) -> None:
    """Make RabbitMQ close worker ``pid``'s consuming connection (found by its local ports), as a
    network cut would; its telemetry connection is left alone."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    listed = subprocess.run(
        [*rabbitmqctl_argv(), "list_connections", "pid", "peer_port", "client_properties", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    mine = [
        line.split("\t")[0]
        for line in listed.stdout.splitlines()
        if '"sluice-worker"' in line and int(line.split("\t")[1]) in ports
    ]
    assert len(mine) == 1, (ports, listed.stdout)
    subprocess.run([*rabbitmqctl_argv(), "close_connection", mine[0], "test"], timeout=30, check=True)


@pytest.mark.timeout(180)
async def test_a_queue_paused_when_its_session_is_lost_starts_paused_in_the_next(stack: Stack) -> None:
    open_for = 15.0
    record = stack.key("ran")
    w = await stack.worker("pz", PAUSE_OPEN_FOR=str(open_for))
    stack.r.set(stack.key("down"), 1)
    await stack.publish("pz.guarded", "pz", record, range(2))
    await eventually(lambda: stack.breaker() == b"o", 30, "the breaker open")
    opened = time.monotonic()
    stack.r.delete(stack.key("down"))
    await eventually(lambda: stack.paused("pz"), 10, "pz paused")
    counter = await stack.tier_counter("pz")
    await stack.publish("pz.guarded", "pz", record, range(2, 50))
    await asyncio.to_thread(_close_consuming_connection, w.proc.pid)
    await eventually(lambda: "(session 2)" in w.stderr(), 30, "the worker's second session")
    assert time.monotonic() - opened < open_for - 2, "the box was too slow to see the new session paused"
    assert await stack.counted(counter) == 0, "no delivery since the pause, the new session's neither"
    assert await stack.paused("pz")
    assert "queue pz stays paused (breaker_open) in the new session" in w.stderr()
    await eventually(lambda: stack.ran(record) == set(range(50)), 60, "every pz task run")
    assert time.monotonic() - opened >= open_for - 1, "they ran once the open time ended, not before"
    assert await stack.consumers("pz") == 1
    assert stack.stop() == [0]
    assert await stack.dead() == 0


def test_the_pause_reasons_are_the_blocking_deferrals_of_the_outcome_model() -> None:
    assert PAUSE_REASONS == (BREAKER_OPEN, THROTTLED)
    assert {REASONS[r] for r in PAUSE_REASONS} == {"deferred_breaker", "deferred_limit"}


def test_a_sub_queue_belongs_to_its_declared_queue() -> None:
    declared = {"billing", "billing.eu", "default"}
    assert base_queue("billing.f3", declared) == "billing"
    assert base_queue("billing.eu.f0", declared) == "billing.eu"
    assert base_queue("billing", declared) == "billing"
    assert base_queue("other", declared) == "other"
