"""``make bench-tracker``: the CPU of the task handles' write path alone, on the real Redis.

``C`` coroutines (256, the bench worker's concurrency) take ``N`` task ids in turn; each does what a
tracked task's steps ask of the worker's :class:`~sluice.handles.Tracker`: ``running()`` (held for
``running_after``, 0.1 s, the worker's default) and then, awaited, ``ended()`` as ``succeeded`` with a
small result, so the start folds into the end (one write a task, batched across the coroutines). The
figure is process CPU (user + system) a task, per round; rounds alternate with ``stub`` (the same loop
with the tracker's calls replaced by ones that do nothing: what the loop itself costs) and ``floor``
(one trivial script call a task through the same batching: what any batched write costs). The tracker's
own cost is ``track`` minus ``floor``.

Keys under a prefix of their own, deleted after the run. Environment: SLUICE_REDIS_URL (the default Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from sluice import _gc
from sluice.handles import State, Tracker, _lua
from sluice.settings import Settings

MODES = ("stub", "floor", "track")


async def one_round(redis: Redis, mode: str, n: int, concurrency: int) -> float:
    prefix = "trkcpu" + uuid.uuid4().hex[:8]
    tracker = Tracker(redis, prefix, worker="bench:1", running_after=0.1)
    if mode == "stub":

        async def ended(*args: Any, **kwargs: Any) -> None:
            return None

        tracker.ended = ended  # type: ignore[method-assign]
        tracker.running = lambda *args, **kwargs: None  # type: ignore[method-assign]

    async def one(i: int) -> None:
        mid = f"m{i}"
        if mode == "floor":
            await tracker._batches.queue((_lua.UNIQUE_RELEASE, [f"{prefix}:u:{{{mid}}}"], [mid])).fut
            return
        tracker.running(
            mid, task="bench.noop_track", queue="default", attempt=1, published_ms=1_700_000_000_000
        )
        await tracker.ended(
            mid,
            state=State.SUCCEEDED,
            attempt=1,
            result_json=b"%d" % i,
            task="bench.noop_track",
            queue="default",
            published_ms=1_700_000_000_000,
        )

    ids = iter(range(n))

    async def loop() -> None:
        for i in ids:
            await one(i)

    try:
        c0 = time.process_time()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(loop())
        return (time.process_time() - c0) / n * 1e6
    finally:
        await tracker.aclose()
        keys = [k async for k in redis.scan_iter(f"{prefix}*", count=1000)]
        for lo in range(0, len(keys), 1000):
            await redis.unlink(*keys[lo : lo + 1000])


async def run(n: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    redis = Redis.from_url(Settings().redis_url)
    try:
        await one_round(redis, "track", 2_000, concurrency)  # warm: scripts loaded, connections open
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(rounds):
            for mode in MODES:
                cpu[mode].append(await one_round(redis, mode, n, concurrency))
        return cpu
    finally:
        await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=40_000, help="tasks a mode and round (40,000)")
    ap.add_argument("-c", "--concurrency", type=int, default=256, help="tasks at a time (256)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="rounds, each of the three modes (5)")
    args = ap.parse_args()
    _gc.tune(Settings().gc_threshold)
    try:
        import uvloop

        cpu = uvloop.run(run(args.n, args.concurrency, args.rounds))
    except ImportError:
        cpu = asyncio.run(run(args.n, args.concurrency, args.rounds))
    print(f"process CPU a task (µs), {args.rounds} rounds of {args.n:,}, {args.concurrency} at a time")
    for mode, values in cpu.items():
        print(
            f"  {mode:6} median {statistics.median(values):6.1f}  lowest {min(values):6.1f}"
            f"  rounds {' '.join(f'{v:.1f}' for v in values)}"
        )
    print(
        f"  the tracker's own (track - floor, medians): {statistics.median(cpu['track']) - statistics.median(cpu['floor']):.1f}"
    )


if __name__ == "__main__":
    main()
