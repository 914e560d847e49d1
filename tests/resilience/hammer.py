"""A load process for the multi-process tests (run as a script, not collected by pytest).

    python hammer.py gcra URL PREFIX TASKS SECONDS RATE BURST
    python hammer.py sliding URL PREFIX TASKS SECONDS LIMIT PERIOD_SECONDS
    python hammer.py sem  URL PREFIX TASKS SECONDS LIMIT HOLD_SECONDS
    python hammer.py hold URL PREFIX LIMIT LEASE_SECONDS   (holds one slot until killed)
    python hammer.py breaker-fail URL PREFIX CALLS        (CALLS failing calls through the breaker)
    python hammer.py breaker-trial URL PREFIX TASKS       (prints "ready", waits for a line, then TASKS
                                                           concurrent allow(); prints the trials granted)

Prints one JSON line: the admissions' server timestamps (gcra, sliding: one per unit) or held intervals
by Redis' clock (sem).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from redis.asyncio import Redis

from sluice.resilience import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitOpen,
    ConcurrencyLimiter,
    GCRALimiter,
    KeySpace,
    Rate,
    SlidingLogLimiter,
)


async def gcra(url: str, prefix: str, tasks: int, seconds: float, rate: int, burst: int) -> list[int]:
    client = Redis.from_url(url, max_connections=tasks)
    limiter = GCRALimiter(client, Rate.per_second(rate), burst=burst, keys=KeySpace(prefix), timeout=5.0)
    return await _hammer(client, limiter, tasks, seconds)


async def sliding(url: str, prefix: str, tasks: int, seconds: float, limit: int, period: float) -> list[int]:
    client = Redis.from_url(url, max_connections=tasks)
    limiter = SlidingLogLimiter(
        client, Rate(limit, period), keys=KeySpace(prefix), timeout=5.0, coalesce=True
    )
    return await _hammer(client, limiter, tasks, seconds, costs=(1, 1, 2, 3))


async def _hammer(
    client: Redis,
    limiter: GCRALimiter | SlidingLogLimiter,
    tasks: int,
    seconds: float,
    costs: tuple[int, ...] = (1,),
) -> list[int]:
    """``tasks`` tasks asking until ``seconds`` pass, half waiting (acquire), half not (try_acquire); the
    i-th task asks for ``costs[i % len(costs)]`` units each time."""
    stamps: list[int] = []
    end = time.monotonic() + seconds

    async def hammer(waits: bool, cost: int) -> None:
        while time.monotonic() < end:
            if waits:
                stamps.extend([(await limiter.acquire("hot", cost)).server_time_us] * cost)
            else:
                decision = await limiter.try_acquire("hot", cost)
                if decision.allowed:
                    stamps.extend([decision.server_time_us] * cost)

    await asyncio.gather(*(hammer(i % 2 == 0, costs[i % len(costs)]) for i in range(tasks)))
    await client.aclose()
    return stamps


async def sem(url: str, prefix: str, tasks: int, seconds: float, limit: int, hold: float) -> list[list[int]]:
    client = Redis.from_url(url, max_connections=tasks * 2)
    limiter = ConcurrencyLimiter(client, limit, lease=5.0, poll=0.005, keys=KeySpace(prefix), timeout=5.0)
    held: list[list[int]] = []
    end = time.monotonic() + seconds

    async def hammer() -> None:
        while time.monotonic() < end:
            async with limiter.acquire("hot") as lease:
                await asyncio.sleep(hold)
                secs, micros = await client.time()
                held.append([lease.granted_at_us, secs * 1_000_000 + micros])

    await asyncio.gather(*(hammer() for _ in range(tasks)))
    await client.aclose()
    return held


async def hold(url: str, prefix: str, limit: int, lease: float) -> None:
    client = Redis.from_url(url)
    limiter = ConcurrencyLimiter(client, limit, lease=lease, keys=KeySpace(prefix))
    async with limiter.acquire("hot") as held:
        print(json.dumps({"token": held.token}), flush=True)
        await asyncio.Event().wait()


BREAKER = BreakerPolicy(
    minimum_calls=10, failure_rate=0.5, open_for=3.0, half_open_permits=3, trial_timeout=10
)


async def breaker_fail(url: str, prefix: str, calls: int) -> list[str]:
    client = Redis.from_url(url)
    breaker = CircuitBreaker(client, "upstream", BREAKER, keys=KeySpace(prefix))
    states = []
    for _ in range(calls):
        permit = await breaker.allow()
        states.append((await breaker.record(permit, success=False)).name)
    await client.aclose()
    return states


async def breaker_trial(url: str, prefix: str, tasks: int) -> dict[str, int]:
    client = Redis.from_url(url, max_connections=tasks)
    breaker = CircuitBreaker(client, "upstream", BREAKER, keys=KeySpace(prefix))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def one() -> str:
        try:
            permit = await breaker.allow()
        except CircuitOpen:
            return "refused"
        return "trial" if permit.trial else "plain"

    outcomes = await asyncio.gather(*(one() for _ in range(tasks)))
    await client.aclose()
    return {kind: outcomes.count(kind) for kind in ("trial", "plain", "refused")}


def main() -> None:
    mode, url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "breaker-fail":
        print(json.dumps(asyncio.run(breaker_fail(url, prefix, int(sys.argv[4])))))
        return
    if mode == "breaker-trial":
        print(json.dumps(asyncio.run(breaker_trial(url, prefix, int(sys.argv[4])))))
        return
    if mode == "hold":
        asyncio.run(hold(url, prefix, int(sys.argv[4]), float(sys.argv[5])))
        return
    tasks, seconds, a, b = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
    if mode == "gcra":
        out: object = asyncio.run(gcra(url, prefix, tasks, seconds, a, int(b)))
    elif mode == "sliding":
        out = asyncio.run(sliding(url, prefix, tasks, seconds, a, b))
    else:
        out = asyncio.run(sem(url, prefix, tasks, seconds, a, b))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
