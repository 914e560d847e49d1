"""Benchmark: GCRA decisions per second against the client's own round-trip ceiling and the `limits` library.

    .venv/bin/python bench/limiter.py [--url redis://127.0.0.1:6379/0] [--seconds 1] [--rounds 3] [--uvloop]
        [--cluster-url redis://127.0.0.1:7001/0]

Measures, on one Redis, for 1 and 64 concurrent asyncio tasks, on one hot key and on 10,000 keys:

* the ceiling: the same redis-py client's PING, and EVALSHA of a trivial script; and PING sent on
  the transport sluice's primitives use (``_wire``: the client's own pooled connections without
  redis-py's per-command layers), the round trip sluice itself cannot beat; and ``EXISTS`` of a key
  on that transport, on 1 and 10,000 keys (the keyed ceiling: with ``--cluster-url`` it is sent to the
  key's node on the cluster's transport too, so the cluster table shows what the box allows any one-key
  command beside what the primitives get);
* sluice ``GCRALimiter.try_acquire``, one round trip per call, and with ``coalesce=True`` (batched);
* ``limits`` (moving window and sliding-window counter, async redis-py storage), if installed
  (``pip install -r bench/requirements.txt``; a benchmark dependency only, never a runtime one).
  Without it the script says so on stderr and prints the other rows.

With ``--cluster-url`` (a node of a Redis Cluster, e.g. ``deploy/cluster/redis-cluster.sh up``), the two
sluice rows are measured on ``redis.asyncio.RedisCluster`` too, in the same interleaved rounds, and a
second table gives each one against the same row on the standalone server (issue 16's bar: 0.7x):
the ratio of the best rounds, the median of the rounds' ratios (each cluster case runs right after its
standalone twin, so a round's two figures share one minute of a busy machine), and this process's CPU
time a call on each (the client's cost; on one small box the cluster's six servers and the client share
the cores). Point ``--url`` at a standalone server nobody else uses when others share the machine.

Prints a Markdown table (calls/s, and the ratios to PING and to a trivial EVALSHA at the same
concurrency). Each case runs once per round, the rounds interleaved, and the best round counts, so
a machine shared with other work disturbs the comparison less. Keys use a unique prefix and are
deleted afterwards; nothing else on the Redis is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from redis.asyncio import Redis, RedisCluster

from sluice.resilience import GCRALimiter, KeySpace, Rate
from sluice.resilience._wire import pack, wire_for
from sluice.resilience._wire_cluster import ClusterWire

TASKS = (1, 64)
KEYSETS = (1, 10_000)
LIMIT = 1_000  # per second, burst 1,000 for every limiter, so the workloads are the same
TRIVIAL = "return 1"
PING = pack(["PING"])


@dataclass
class Row:
    what: str
    tasks: int
    keys: int
    rate: float
    cpu_us: float = 0.0  # this process's CPU time a call (user + system), in the best round
    rounds: tuple[float, ...] = ()  # calls/s in each round, in order


async def run_for(call: Callable[[int], Awaitable[Any]], tasks: int, seconds: float) -> tuple[float, float]:
    """Calls per second of ``call(i)`` from ``tasks`` concurrent tasks during ``seconds``, and this
    process's CPU microseconds a call (the client's cost: less disturbed than the rate by a busy machine,
    which it is not on its own)."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    done = 0

    async def run(start: int) -> None:
        nonlocal done
        i = start
        while loop.time() < stop:
            await call(i)
            i += tasks
            done += 1

    began = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(run(t) for t in range(tasks)))
    return done / (time.perf_counter() - began), (time.process_time() - cpu) / max(done, 1) * 1e6


Case = tuple[str, int, int, Callable[[int], Awaitable[Any]]]


CLUSTER = " (Redis Cluster)"
EXISTS = "EXISTS on sluice's transport (keyed ceiling)"


async def bench(url: str, seconds: float, rounds: int, cluster_url: str | None = None) -> list[Row]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(url)
    cluster: RedisCluster | None = None
    names = [f"k{i}" for i in range(max(KEYSETS))]

    def spread(decide: Callable[[str], Awaitable[Any]], keys: int) -> Callable[[int], Awaitable[Any]]:
        """Call number i asks about key i mod ``keys``."""
        return lambda i: decide(names[i % keys])

    sha = await client.script_load(TRIVIAL)
    cases: list[Case] = []
    wire = wire_for(client)
    assert wire is not None
    for tasks in TASKS:
        cases.append(("redis-py PING (ceiling)", tasks, 0, lambda i: client.ping()))
        cases.append(("redis-py EVALSHA `return 1`", tasks, 0, lambda i: client.evalsha(sha, 0)))
        cases.append(("PING on sluice's transport", tasks, 0, lambda i: wire.request(PING)))

    plain = GCRALimiter(client, Rate.per_second(LIMIT), keys=KeySpace(prefix))
    batched = GCRALimiter(client, Rate.per_second(LIMIT), keys=KeySpace(prefix + "b"), coalesce=True)
    # each sluice row with its Redis Cluster twin: the twin's case runs right after it, so the two see the
    # same minute of a shared machine, and each round gives one ratio
    pairs: list[list[tuple[str, GCRALimiter]]] = [
        [("sluice GCRA", plain)],
        [("sluice GCRA, coalesce=True", batched)],
    ]
    if cluster_url is not None:
        cluster = RedisCluster.from_url(cluster_url)
        await cluster.initialize()
        pairs[0].append(
            ("sluice GCRA" + CLUSTER, GCRALimiter(cluster, Rate.per_second(LIMIT), keys=KeySpace(prefix)))
        )
        pairs[1].append(
            (
                "sluice GCRA, coalesce=True" + CLUSTER,
                GCRALimiter(cluster, Rate.per_second(LIMIT), keys=KeySpace(prefix + "b"), coalesce=True),
            )
        )
    limiters = [one for pair in pairs for one in pair]
    # the keyed ceiling: EXISTS of the call's key (a read, no script) on the same transport as the
    # primitives, on one server and routed by the key's slot on the cluster: what the box allows any
    # one-key command, so the sluice rows' ratios can be read against the transport's own
    keyed = [f"{prefix}:x:{{{name}}}" for name in names]
    exists = [pack(["EXISTS", key]) for key in keyed]
    routes = ClusterWire(cluster) if cluster is not None else None

    async def exists_on_cluster(keys: int, i: int) -> Any:
        assert routes is not None
        node = routes.node([keyed[i % keys]])
        assert node is not None, "the cluster client has no slot map"
        return await routes.call(node, exists[i % keys], "")

    for keys in KEYSETS:
        for tasks in TASKS:
            cases.append((EXISTS, tasks, keys, lambda i, k=keys: wire.request(exists[i % k])))
            if cluster is not None:
                cases.append((EXISTS + CLUSTER, tasks, keys, partial(exists_on_cluster, keys)))
    for pair in pairs:
        for keys in KEYSETS:
            for tasks in TASKS:
                for label, limiter in pair:
                    cases.append((label, tasks, keys, spread(limiter.try_acquire, keys)))

    try:
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

        storage = RedisStorage(
            url.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=prefix + "L"
        )
    except (ImportError, TypeError) as exc:  # TypeError: a `limits` older than 4.1 (no redis-py backend)
        print(
            f"NOTE: no `limits` rows ({exc}): pip install -r bench/requirements.txt (limits >= 4.1)",
            file=sys.stderr,
        )
    else:
        item = RateLimitItemPerSecond(LIMIT)
        for label, strategy in (
            ("limits moving window", MovingWindowRateLimiter(storage)),
            ("limits sliding-window counter", SlidingWindowCounterRateLimiter(storage)),
        ):
            for keys in KEYSETS:
                for tasks in TASKS:
                    cases.append((label, tasks, keys, spread(partial(strategy.hit, item), keys)))

    # Every case once per round, rounds interleaved; the best round counts (the machine may be shared).
    best: dict[int, tuple[float, float]] = {}
    every: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for _ in range(rounds):
        for index, (_, tasks, _, call) in enumerate(cases):
            await run_for(call, tasks, min(0.2, seconds / 4))  # warm-up: connections, script cache
            got = await run_for(call, tasks, seconds)
            best[index] = max(best.get(index, (0.0, 0.0)), got)
            every[index].append(got[0])

    for _, limiter in limiters:
        await limiter.aclose()
    found = [k async for k in client.scan_iter(match=f"*{prefix}*", count=1000)]
    for i in range(0, len(found), 1000):
        await client.delete(*found[i : i + 1000])
    await client.aclose()
    if cluster is not None:
        for key in [k async for k in cluster.scan_iter(match=f"*{prefix}*", count=1000)]:
            await cluster.delete(key)
        await cluster.aclose()
    rows = [
        Row(label, tasks, keys, *best[i], tuple(every[i])) for i, (label, tasks, keys, _) in enumerate(cases)
    ]
    return sorted(rows, key=lambda r: r.what.endswith(CLUSTER))  # stable: the standalone rows first


def table(rows: list[Row]) -> str:
    ping = {r.tasks: r.rate for r in rows if r.what.startswith("redis-py PING")}
    evalsha = {r.tasks: r.rate for r in rows if r.what.startswith("redis-py EVALSHA")}
    wire = {r.tasks: r.rate for r in rows if r.what.startswith("PING on sluice")}
    lines = [
        "| what | tasks | keys | calls/s | x redis-py PING | x EVALSHA `return 1` | x PING on sluice's transport |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        keys = "-" if r.keys == 0 else f"{r.keys:,}"
        lines.append(
            f"| {r.what} | {r.tasks} | {keys} | {r.rate:,.0f} | {r.rate / ping[r.tasks]:.2f} "
            f"| {r.rate / evalsha[r.tasks]:.2f} | {r.rate / wire[r.tasks]:.2f} |"
        )
    return "\n".join(lines)


def cluster_table(rows: list[Row]) -> str:
    """Each sluice row on Redis Cluster against the same row on the standalone server."""
    alone = {(r.what, r.tasks, r.keys): r for r in rows}
    lines = [
        "| what | tasks | keys | standalone calls/s | Redis Cluster calls/s | x standalone (bar 0.7) "
        "| median of the rounds' ratios | client CPU µs a call: standalone | cluster |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if not r.what.endswith(CLUSTER):
            continue
        base = alone[(r.what.removesuffix(CLUSTER), r.tasks, r.keys)]
        lines.append(
            f"| {r.what.removesuffix(CLUSTER)} | {r.tasks} | {r.keys:,} | {base.rate:,.0f} | {r.rate:,.0f} "
            f"| {r.rate / base.rate:.2f} | {statistics.median(c / b for c, b in zip(r.rounds, base.rounds, strict=True)):.2f} "
            f"| {base.cpu_us:.1f} | {r.cpu_us:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=float, default=0.6, help="per case and round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (interleaved); the best one counts")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--cluster-url", help="a node of a Redis Cluster: the sluice rows on it too")
    args = parser.parse_args()
    work = bench(args.url, args.seconds, args.rounds, args.cluster_url)
    if args.uvloop:
        import uvloop

        rows = uvloop.run(work)
    else:
        rows = asyncio.run(work)
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(
        f"Python {platform.python_version()}, {loop_name} loop, limit {LIMIT}/s (burst {LIMIT}), "
        f"best of {args.rounds} interleaved rounds of {args.seconds} s per case\n"
    )
    print(table(rows))
    if args.cluster_url:
        print("\nOn Redis Cluster, against the same row on the standalone server:\n")
        print(cluster_table(rows))


if __name__ == "__main__":
    main()
