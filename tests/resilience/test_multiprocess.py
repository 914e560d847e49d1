"""Several OS processes with many asyncio tasks each on one key: the bounds hold by Redis' clock."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from sluice.resilience import KeySpace

HAMMER = Path(__file__).with_name("hammer.py")
PROCESSES, TASKS, SECONDS = 3, 20, 3.0


async def run_hammers(*args: str) -> list[object]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(HAMMER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(PROCESSES)
    ]
    outputs = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    return outputs


def max_excess(stamps: list[int], rate: float) -> float:
    """max over windows [t_i, t_j] of (admissions in it) - rate * (t_j - t_i): must be <= burst."""
    worst, best_start = -float("inf"), float("inf")
    for j, t in enumerate(sorted(stamps)):
        best_start = min(best_start, j - rate * t / 1_000_000)
        worst = max(worst, j + 1 - rate * t / 1_000_000 - best_start)
    return worst


@pytest.mark.slow
async def test_gcra_bound_holds_across_processes(redis_url: str, keys: KeySpace) -> None:
    rate, burst = 200, 10
    outputs = await run_hammers(
        "gcra", redis_url, keys.prefix, str(TASKS), str(SECONDS), str(rate), str(burst)
    )
    stamps = [t for out in outputs for t in out]  # type: ignore[attr-defined]
    assert all(len(out) > 0 for out in outputs)  # type: ignore[arg-type]
    assert max_excess(stamps, rate) <= burst
    # and it is not stricter than it must be: the fleet got (nearly) the whole rate while it competed
    span = (max(stamps) - min(stamps)) / 1_000_000
    assert len(stamps) >= 0.9 * rate * span


@pytest.mark.slow
async def test_sliding_log_never_holds_more_than_the_limit_in_any_window(
    redis_url: str, keys: KeySpace
) -> None:
    """3 processes x 20 tasks (costs 1 to 3, half waiting, half not) on one 60-per-0.5-s key for 3 s: no
    closed window of 0.5 s by the admission stamps Redis answered holds more than 60 units."""
    limit, period = 60, 0.5
    outputs = await run_hammers(
        "sliding", redis_url, keys.prefix, str(TASKS), str(SECONDS), str(limit), str(period)
    )
    stamps = sorted(t for out in outputs for t in out)  # type: ignore[attr-defined]
    assert all(len(out) > 0 for out in outputs)  # type: ignore[arg-type]
    most, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] < t - round(period * 1_000_000):
            lo += 1
        most = max(most, hi - lo + 1)
    assert most <= limit
    assert most >= limit - 3  # the windows were full: the test exercised contention
    # and the fleet got (nearly) the whole rate: limit per period over the span, the first window included
    span = (stamps[-1] - stamps[0]) / 1_000_000
    assert len(stamps) >= 0.9 * limit * span / period


@pytest.mark.slow
async def test_semaphore_never_exceeds_its_limit_across_processes(redis_url: str, keys: KeySpace) -> None:
    limit = 4
    outputs = await run_hammers("sem", redis_url, keys.prefix, "6", "2.0", str(limit), "0.01")
    intervals = [tuple(iv) for out in outputs for iv in out]  # type: ignore[attr-defined]
    assert len(intervals) > 50
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    holders, most = 0, 0
    for _, step in events:
        holders += step
        most = max(most, holders)
    assert most <= limit
    assert most == limit  # the limit was actually reached: the test exercised contention
