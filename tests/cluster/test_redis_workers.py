"""Three ``sluice worker`` processes keep one global rate limit on Redis Cluster, through a kill -9 of the
master that holds the limit's key.

The workers (``SLUICE_REDIS_CLUSTER=true``, ``SLUICE_REDIS_URL`` naming one node of the loopback cluster;
RabbitMQ is the machine's) run ``clusterlim.limited`` (50/s, burst 5: the policy tests' 3-worker check,
tests/policies/test_rate_limit.py, with the same bound). Its limit is one GCRA key, so it lives on one shard.
Mid-run that shard's master is killed with SIGKILL. Then:

* its replica is promoted (within ``FAILOVER_BOUND``), and ``redis-cluster.sh up`` brings the killed node
  back as a replica afterwards, so later tests see three masters and three replicas;
* during the fail-over the limiter's decisions fail closed (its outage policy): the worker defers those
  tasks by ``BACKEND_RETRY`` (1 s, through a delay tier, no attempt spent) and logs the outage once, then
  that Redis answers again (each worker's log says after how long);
* no worker dies (all three run until SIGTERM and exit 0), every task runs exactly once at attempt 1 and
  none is dead-lettered;
* the rate is kept before the kill and after the promotion: at most BURST + 1.3 x LIMIT in any second of
  handler times, as on a standalone Redis.

What a fail-over may lose: Redis replicates asynchronously, so the decisions the master took in the last
moment before it died (its replication lag: well under a millisecond on loopback) may be missing on the
promoted replica. A GCRA key's state is one timestamp (its theoretical arrival time), so a lost write makes
the replica's timestamp slightly older: the limit then admits at most those few lost units again, once.
The limiter fails closed in between, so the fail-over admits less, not more, than the limit: the measured
busiest second over the whole run is printed beside the bound.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from policies.test_rate_limit import busiest_second  # the standalone 3-worker check's measure
from sluice.resilience import GCRALimiter, KeySpace, Rate
from support.clusters import RedisClusterNodes
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import SLUICE, WorkerProcess, stop_all, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent
LIMIT, BURST, N = 50, 5, 500
KILL_AFTER = 150  # runs recorded before the kill (about 3 s into the run)
FAILOVER_BOUND = 30.0  # seconds from the kill to the replica's promotion (node timeout 2 s + election)


def server_ms(r: redis_sync.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def owner(port: int, slot: int) -> int | None:
    """The port of the master serving ``slot`` as node ``port`` sees it (None while none does)."""
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "cluster", "nodes"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 9 or "master" not in cols[2] or "fail" in cols[2]:
            continue
        for span in cols[8:]:
            lo, _, hi = span.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return int(cols[1].split(":")[1].split("@")[0])
    return None


def test_three_workers_keep_a_limit_through_a_master_kill(
    redis_cluster: RedisClusterNodes,
    amqp_url: str,
    redis_url: str,
    r: redis_sync.Redis,
    unique: str,
    tmp_path: Path,
) -> None:
    rc = redis_sync.RedisCluster(host="127.0.0.1", port=7001)
    key = GCRALimiter(rc, Rate.per_second(LIMIT), keys=KeySpace(unique)).key("clusterlim.limited")  # type: ignore[arg-type]
    slot = rc.keyslot(key)
    victim = rc.get_node_from_key(key).port
    watcher = next(p for p in redis_cluster.ports if p != victim)
    env = worker_env(
        amqp_url,
        redis_cluster.url,
        unique,
        HERE,
        SLUICE_REDIS_CLUSTER="true",
        SLUICE_TEST_RECORD_URL=redis_url,
        SLUICE_GRACE_PERIOD="5",
    )
    argv = ["--tasks", "cluster_limit_tasks", "--concurrency", "16", "--prefetch", "32"]
    workers = [WorkerProcess(argv, env, tmp_path / f"w{i}.log") for i in range(3)]
    runs_key = f"{unique}:runs"
    killed = False
    try:
        for w in workers:
            w.wait_consuming(amqp_url, f"{unique}.q.default", consumers=3, within=60)
        lines = "".join(json.dumps({"key": runs_key, "n": i}) + "\n" for i in range(N))
        pub = subprocess.run(
            [SLUICE, "publish", "clusterlim.limited", "-"],
            input=lines,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pub.returncode == 0, pub.stderr
        wait_until(lambda: r.llen(runs_key) >= KILL_AFTER, 60, f"{KILL_AFTER} runs before the kill")

        kill_ms = server_ms(r)
        redis_cluster.kill(victim)
        killed = True
        wait_until(lambda: owner(watcher, slot) not in (None, victim), FAILOVER_BOUND, "the replica promoted")
        promoted_ms = server_ms(r)
        new_master = owner(watcher, slot)

        wait_until(lambda: r.llen(runs_key) >= N, 120, f"all {N} runs")
        assert [w.proc.poll() for w in workers] == [None, None, None], "a worker died"
        time.sleep(0.5)  # a duplicate would land within a few ms of its twin: give it the time to show
        runs = [tuple(map(int, raw.decode().split())) for raw in r.lrange(runs_key, 0, -1)]
        dead = queue_state(amqp_url, f"{unique}.dlq")
    finally:
        codes = stop_all(workers, timeout=30)
        logs = [w.stderr() for w in workers]
        if killed:
            redis_cluster.up()  # the killed node back, as a replica of the promoted one
        for k in rc.scan_iter(match=f"{unique}:*", count=1000):
            rc.delete(k)
        rc.close()

    status = redis_cluster.status()  # `up` returned once 3 masters and 3 synced replicas answer
    assert sorted(re.findall(r"role=(\w+)", status)) == ["master"] * 3 + ["slave"] * 3, status
    assert f"127.0.0.1:{victim} running" in status and "role=slave" in _line(status, victim), status
    assert codes == [0, 0, 0], (codes, [log[-1500:] for log in logs])
    assert sorted(n for n, _, _ in runs) == list(range(N)), "every task runs exactly once"
    assert {attempt for _, attempt, _ in runs} == {1}, (
        "over the limit or in the fail-over: deferred, never retried"
    )
    assert dead is not None and dead[0] == 0, f"dead-lettered: {dead}"

    times = sorted(ms for _, _, ms in runs)
    before = [t for t in times if t < kill_ms]
    after = [t for t in times if t > promoted_ms]
    during = len(times) - len(before) - len(after)
    gap = max(b - a for a, b in itertools.pairwise(times)) / 1000
    outages = [float(s) for log in logs for s in re.findall(r"redis reachable again after ([0-9.]+) s", log)]
    closed = sum(log.count("failing closed") for log in logs)
    failover_s = (promoted_ms - kill_ms) / 1000
    span = (times[-1] - times[0]) / 1000
    print(
        f"{N} tasks in {span:.2f}s; master 127.0.0.1:{victim} (slot {slot}) killed after {len(before)} runs, "
        f"127.0.0.1:{new_master} promoted {failover_s:.1f}s later; {during} runs between the kill and the "
        f"promotion, longest pause between runs {gap:.2f}s; the limiter failed closed in {closed} worker(s), "
        f"Redis reachable again after {outages} s; busiest second before {busiest_second(before)}, after "
        f"{busiest_second(after)}, over the whole run {busiest_second(times)} (bound {BURST + LIMIT * 1.3:.0f})"
    )
    assert busiest_second(before) <= BURST + LIMIT * 1.3
    assert busiest_second(after) <= BURST + LIMIT * 1.3
    # (N - BURST) / LIMIT = 9.9 s at the limit, plus the fail-over, plus the 1 s deferrals' slack
    assert span <= (N - BURST) / LIMIT + failover_s + 8, span
    assert closed >= 1 and len(outages) == closed, "each worker that saw the outage saw its end"


def _line(status: str, port: int) -> str:
    return next((line for line in status.splitlines() if line.startswith(f"127.0.0.1:{port} ")), "")
