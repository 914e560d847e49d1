"""A breaker shared by two worker processes: opens on failures, stops the task's runs, then closes."""

from __future__ import annotations

import json

import pytest
import redis

from .conftest import Workers, publish, records, wait_until


def _state(r: redis.Redis, unique: str) -> bytes | None:
    v = r.hget(f"{unique}:breaker:{{dep}}", "state")
    return v if isinstance(v, bytes) else None


def _now_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


@pytest.mark.slow
def test_breaker_opens_for_all_workers_stops_runs_and_closes(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str
) -> None:
    for _ in range(2):
        workers.start("--concurrency", "1", "--prefetch", "2")
    workers.wait_consumers(2)
    key = f"{unique}:guarded"
    r.set(key + ":down", 1)
    publish(env, "pol.guarded", [json.dumps({"key": key, "n": i}) for i in range(6)])
    wait_until(lambda: _state(r, unique) == b"o", 15, "the breaker to open")
    opened = _now_ms(r)
    before = r.llen(key)
    assert before >= 4, "minimum_calls failures opened it"

    # while it is open, no worker runs the task: the deliveries are deferred
    publish(env, "pol.guarded", [json.dumps({"key": key, "n": 100 + i}) for i in range(10)])
    r.delete(key + ":down")
    wait_until(lambda: len({n for n, _, _ in records(r, key) if n >= 100}) >= 10, 30, "the later tasks")
    wait_until(lambda: _state(r, unique) in (b"c", None), 10, "the breaker to close")

    later = [(n, a, ms) for n, a, ms in records(r, key) if n >= 100]
    first_later = min(ms for _, _, ms in later)
    # open_for is 3 s; the test saw it open at most a poll (0.1 s) + a round trip late
    assert first_later >= opened + 2500, first_later - opened
    assert {a for _, a, _ in later} == {1}, "deferrals behind an open breaker spend no attempt"
    assert sorted(n for n, _, _ in later) == list(range(100, 110)), "each ran once"
