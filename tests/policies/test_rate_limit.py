"""A global rate limit shared by three worker processes (real RabbitMQ, Redis and processes)."""

from __future__ import annotations

import json

import pytest
import redis

from .conftest import Workers, publish, records, wait_until

LIMIT, BURST, N = 50, 5, 500


def busiest_second(times_ms: list[int]) -> int:
    """The most runs in any window of 1,000 ms."""
    times = sorted(times_ms)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1000:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.slow
def test_three_workers_share_50_per_second(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str
) -> None:
    for _ in range(3):
        workers.start("--concurrency", "16", "--prefetch", "32")
    workers.wait_consumers(3)
    key = f"{unique}:runs"
    publish(env, "pol.limited", [json.dumps({"key": key, "n": i}) for i in range(N)])
    wait_until(lambda: r.llen(key) >= N, 45, f"{N} runs")

    runs = records(r, key)
    assert sorted(n for n, _, _ in runs) == list(range(N)), "every task runs exactly once"
    times = [ms for _, _, ms in runs]
    span = (max(times) - min(times)) / 1000
    busiest = busiest_second(times)
    print(f"{N} tasks in {span:.2f}s, busiest second {busiest}")
    # (N - BURST) / LIMIT = 9.9 s at the limit; deferrals come back in 1 s tiers, so allow some slack above
    assert 9.0 <= span <= 15.0, span
    # GCRA admits at most BURST + LIMIT * t in any interval t (the library's tests check that exactly, on
    # a fake clock). The times here are taken by the handlers after each admission: a worker process
    # starved of CPU for a while runs what it admitted late and together, so a 1 s window of handler times
    # spans up to 1 s + that delay of admissions. Allowed: 300 ms (CI runs three workers and the suite on
    # 2 cores; 60, 64 and 66 were seen under load, 55 or less on a quiet machine). An unlimited or
    # double-counting limiter puts far more in a second (the span check above bounds the long-run rate).
    assert busiest <= BURST + LIMIT * 1.3, busiest
    # over the limit is not a failure: no run is a retry, although most tasks were deferred at least once
    assert {attempt for _, attempt, _ in runs} == {1}
