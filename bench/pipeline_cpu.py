"""``make bench-pipeline``: the worker's CPU a delivery in process, without the broker.

The worker's own :class:`~sluice_worker.runner.Runner` and task pipelines, with its Redis policies and
task handles (:class:`~sluice_worker.tracking.WorkerHandles`) on the real Redis, run ``N`` deliveries of the
peer harness's payload shape, ``C`` at a time, for four tasks: plain, rate-limited by a limit never reached
(the ``sluice-*-policy`` bench variant's task), tracked with a result (``-track``'s) and idempotent
(``-idem``'s: the same limit and a key per delivery). Rounds alternate the four so they
share the machine's minutes; each figure is process CPU (user + system) a delivery, the median and the
lowest of the rounds. No AMQP: what is left is what the pipelines and their Redis clients cost the worker,
the part that decides the tracked and idempotent rows of ``make bench`` on a box where the worker is the
bottleneck (docs/benchmarks.md).

The collector is tuned as the worker tunes it (``SLUICE_GC_THRESHOLD``, :mod:`sluice._gc`);
``--gc-threshold 0`` leaves Python's defaults, to see what the tuning is worth.

``--stub-tracker`` replaces the tracker's ``running`` and ``ended`` by calls that do nothing: the tracked
row then shows what the tracking steps cost apart from the tracker's write path.

Keys under a prefix of its own, deleted after the run. Environment: SLUICE_REDIS_URL (the default Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from sluice import _gc, task
from sluice.policy import Idempotency, RateLimit
from sluice.protocol import TaskMessage, encode_body
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.telemetry import Telemetry
from sluice_worker.policies import Policies
from sluice_worker.runner import Runner
from sluice_worker.tracking import WorkerHandles


class Payload(BaseModel):  # the peer harness's shape (about 100 bytes of JSON)
    i: int
    kind: str
    user: str
    data: str


@task("pipe.plain")
async def plain(p: Payload) -> None:
    return None


@task("pipe.policy", rate_limit=RateLimit(1_000_000, 1.0))
async def policy(p: Payload) -> None:
    return None


@task("pipe.track", track=True, result=True)
async def tracked(p: Payload) -> int:
    return p.i


@task("pipe.idem", rate_limit=RateLimit(1_000_000, 1.0), idempotency=Idempotency(ttl=600.0))
async def idem(p: Payload) -> None:
    return None


TASKS = ("pipe.plain", "pipe.policy", "pipe.track", "pipe.idem")


async def run(n: int, concurrency: int, rounds: int, stub_tracker: bool) -> dict[str, list[float]]:
    prefix = "pipecpu" + uuid.uuid4().hex[:8]
    settings = Settings(prefix=prefix)
    client = Redis.from_url(settings.redis_url)
    telemetry = Telemetry("worker")
    handles = WorkerHandles(client, settings, telemetry=telemetry)
    await handles.start()
    if stub_tracker:

        async def ended(*args: Any, **kwargs: Any) -> None:
            return None

        handles.tracker.ended = ended  # type: ignore[method-assign]
        handles.tracker.running = lambda *args, **kwargs: None  # type: ignore[method-assign]
    policies = Policies(
        client, prefix, tracker=handles.tracker, canceller=handles.canceller, telemetry=telemetry
    )
    pool = ThreadPoolExecutor(2)
    runner = Runner(Registry([plain, policy, tracked, idem]), settings, pool, policies.failures, policies)
    gate = asyncio.Semaphore(concurrency)

    async def deliver(name: str, i: int, run_id: str) -> None:
        key = f"{run_id}:{i}" if name == "pipe.idem" else None
        msg = TaskMessage(
            name, {"i": i, "kind": "bench", "user": "u1", "data": "x" * 60}, idempotency_key=key
        )
        body, headers = encode_body(msg.payload, 1 << 20), msg.headers()
        async with gate:
            await runner.run(body, headers, msg.id)

    cpu: dict[str, list[float]] = {name: [] for name in TASKS}
    try:
        for _ in range(rounds):
            for name in TASKS:
                run_id = uuid.uuid4().hex
                c0 = time.process_time()
                await asyncio.gather(*(deliver(name, i, run_id) for i in range(n)))
                cpu[name].append((time.process_time() - c0) / n * 1e6)
    finally:
        await handles.aclose()
        pool.shutdown()
        async with client.pipeline(transaction=False) as pipe:
            async for key in client.scan_iter(f"{prefix}*", count=5000):
                pipe.unlink(key)
            await pipe.execute()
        await client.aclose()
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="deliveries a task and round (10,000)")
    ap.add_argument("-c", "--concurrency", type=int, default=256, help="deliveries at a time (256)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="rounds, each of the four tasks (5)")
    ap.add_argument("--stub-tracker", action="store_true", help="the tracker writes nothing")
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=Settings().gc_threshold,
        help="the worker's SLUICE_GC_THRESHOLD (0: Python's collector as it is)",
    )
    args = ap.parse_args()
    _gc.tune(args.gc_threshold)
    try:
        import uvloop

        cpu = uvloop.run(run(args.n, args.concurrency, args.rounds, args.stub_tracker))
    except ImportError:
        cpu = asyncio.run(run(args.n, args.concurrency, args.rounds, args.stub_tracker))
    plain_median = statistics.median(cpu["pipe.plain"])
    print(
        f"worker CPU a delivery in process (µs), {args.rounds} rounds of {args.n:,}, {args.concurrency} at a time,"
        f" gc threshold {args.gc_threshold or 'as it is'}"
    )
    for name, values in cpu.items():
        med = statistics.median(values)
        print(
            f"  {name:11} median {med:6.1f}  lowest {min(values):6.1f}  x plain {med / plain_median:4.2f}"
            f"  rounds {' '.join(f'{v:.1f}' for v in values)}"
        )


if __name__ == "__main__":
    main()
