"""Fleet-wide concurrency, and a run-time limit set with `sluice limits` while the workers run."""

from __future__ import annotations

import json
import subprocess

import redis

from .conftest import SLUICE, Workers, publish, records, wait_until


def test_concurrency_is_fleet_wide(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str
) -> None:
    for _ in range(2):
        workers.start("--concurrency", "8")
    workers.wait_consumers(2)
    key, n = f"{unique}:pair", 12
    publish(env, "pol.pair", [json.dumps({"key": key, "n": i}) for i in range(n)])
    wait_until(lambda: r.llen(key) >= 2 * n, 30, "every run to end")
    events = sorted((ms, 1 if i < 1000 else -1) for i, _, ms in records(r, key))
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, f"at most 2 at once across both workers, saw {most}"


def test_a_run_time_limit_applies_to_running_workers(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str
) -> None:
    workers.start()
    workers.wait_consumers(1)
    set_ = subprocess.run(
        [*SLUICE, "limits", "set", "pol.fast", "5/s", "--burst", "1"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert set_.returncode == 0, set_.stderr
    key, n = f"{unique}:fast", 16
    publish(env, "pol.fast", [json.dumps({"key": key, "n": i}) for i in range(n)])
    wait_until(lambda: r.llen(key) >= n, 30, f"{n} runs")
    times = sorted(ms for _, _, ms in records(r, key))
    span = (times[-1] - times[0]) / 1000
    # (n - burst) / 5 per second = 3 s, where the declared policy (none) would take milliseconds
    assert span >= 2.5, span
