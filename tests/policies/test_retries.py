"""Delayed retries hold no slot, arrive at the policy's delays and end in the DLQ with the last failure."""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any

import redis

from .conftest import SLUICE, Workers, publish, queue_state, records, wait_until


def _dlq(env: dict[str, str], task_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [*SLUICE, "dlq", "show", task_id, "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_flaky_retries_arrive_on_time_hold_no_slot_and_end_in_the_dlq(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    # two slots: a retry waiting in the worker would stall the fast tasks behind it
    workers.start("--concurrency", "2", "--prefetch", "4")
    workers.wait_consumers(1)
    flaky_key, fast_key = f"{unique}:flaky", f"{unique}:fast"
    ids = publish(env, "pol.flaky", [json.dumps({"key": flaky_key, "n": i}) for i in range(2)])
    wait_until(lambda: r.llen(flaky_key) >= 2, 20, "the first attempts")
    publish(env, "pol.fast", [json.dumps({"key": fast_key, "n": i}) for i in range(300)])
    wait_until(lambda: r.llen(fast_key) >= 300, 20, "the fast tasks")
    wait_until(lambda: r.llen(flaky_key) >= 8, 20, "four attempts of each flaky task")
    wait_until(lambda: (queue_state(amqp_url, f"{unique}.dlq") or (0, 0))[0] >= 2, 10, "two dead letters")

    flaky = records(r, flaky_key)
    fast_done = max(ms for _, _, ms in records(r, fast_key))
    for n in range(2):
        runs = sorted((a, ms) for m, a, ms in flaky if m == n)
        assert [a for a, _ in runs] == [1, 2, 3, 4]
        gaps = [(b - a) / 1000 for (_, a), (_, b) in itertools.pairwise(runs)]
        print(f"flaky #{n}: gaps {gaps}")
        for gap, want in zip(gaps, (1.0, 2.0, 4.0), strict=True):
            assert want - 0.6 <= gap <= want + 0.9, (gaps, want)
        # the 300 fast tasks all ran while this task was still waiting for its last attempt
        assert fast_done < runs[-1][1]

    for task_id in ids:
        d = _dlq(env, task_id)
        assert d["reason"] == "handler_error"
        assert d["attempt"] == 4
        assert d["error_type"] == "ConnectionError"
        assert "failed on attempt 4" in d["error_message"]
        assert "raise ConnectionError" in d["traceback"] and "policy_tasks.py" in d["traceback"]
        assert 6000 <= d["last_failure_ms"] - d["first_failure_ms"] <= 9500
    shown = subprocess.run(
        [*SLUICE, "dlq", "show", ids[0]], env=env, capture_output=True, text=True, timeout=30
    )
    assert "ConnectionError" in shown.stdout and "traceback" in shown.stdout


def test_a_timed_out_async_handler_is_cancelled_retried_then_dead_lettered(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    workers.start()
    workers.wait_consumers(1)
    key = f"{unique}:slow"
    (task_id,) = publish(env, "pol.slow", [json.dumps({"key": key})])
    wait_until(lambda: (queue_state(amqp_url, f"{unique}.dlq") or (0, 0))[0] >= 1, 15, "the dead letter")
    runs = records(r, key)
    assert [a for _, a, _ in runs] == [1, 2]
    assert runs[1][2] - runs[0][2] < 2000, "cancelled after 0.5 s, not after the handler's 5 s sleep"
    d = _dlq(env, task_id)
    assert d["error_type"] == "TaskTimeout"
    assert "timeout of 0.5s" in d["error_message"]


def test_a_delayed_publish_runs_when_due(
    workers: Workers, env: dict[str, str], r: redis.Redis, unique: str
) -> None:
    workers.start()
    workers.wait_consumers(1)
    key = f"{unique}:delayed"
    before = _server_ms(r)
    # 3 s: the 2 s tier, then a worker sends it on to the 1 s tier (x-sluice-eta still 1 s ahead)
    publish(env, "pol.fast", [json.dumps({"key": key})], "--delay", "3s")
    after = _server_ms(r)  # the command's start-up is in between: the due time is in [before, after] + 3 s
    wait_until(lambda: r.llen(key) >= 1, 15, "the delayed run")
    ran = records(r, key)[0][2]
    assert before + 2500 <= ran <= after + 3000 + 700, (ran - before, after - before)


def _server_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000
