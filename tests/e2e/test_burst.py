"""``sluice worker --burst`` through the installed console script: it runs what is queued (and what
waits in a delay tier), then drains and exits 0 by itself; on an empty queue it exits at once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from support.queues import queue_state
from support.workers import SLUICE, WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return worker_env(amqp_url, redis_url, unique, HERE, SLUICE_METRICS_ENABLED="false")


def publish(env: dict[str, str], key: str, ns: range, *args: str) -> None:
    lines = "".join(json.dumps({"key": key, "n": n}) + "\n" for n in ns)
    done = subprocess.run(
        [SLUICE, "publish", "e2e.mark", "-", *args],
        input=lines,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def burst(env: dict[str, str], log: Path, timeout: float, *args: str) -> tuple[int, float, str]:
    """(exit status, seconds it ran, its log) of ``sluice worker --tasks e2e_tasks --burst ARGS``."""
    t0 = time.monotonic()
    w = WorkerProcess(["--tasks", "e2e_tasks", "--burst", *args], env, log)
    code = w.wait(timeout)
    return code, time.monotonic() - t0, w.stderr()


def test_runs_every_queued_task_then_exits_0(
    env: dict[str, str], r: redis.Redis, amqp_url: str, unique: str, tmp_path: Path
) -> None:
    n, key = 300, f"{unique}:runs"
    publish(env, key, range(n))
    code, _, log = burst(env, tmp_path / "w.log", 60, "--concurrency", "4", "--prefetch", "16")
    assert code == 0, log[-2000:]
    assert {int(k): int(v) for k, v in r.hgetall(key).items()} == dict.fromkeys(range(n), 1)
    assert queue_state(amqp_url, f"{unique}.q.default") == (0, 0)
    assert "burst: the queues are empty and no task runs: draining" in log
    assert log.rstrip().endswith("stopped")


def test_exits_promptly_on_an_empty_queue(env: dict[str, str], tmp_path: Path) -> None:
    code, took, log = burst(env, tmp_path / "w.log", 30)
    assert code == 0, log[-2000:]
    assert took < 8, f"took {took:.1f}s on an empty queue"  # a process start, a connection, 1 s quiet


def test_waits_for_a_task_in_a_delay_tier(
    env: dict[str, str], r: redis.Redis, unique: str, tmp_path: Path
) -> None:
    key = f"{unique}:delayed"
    publish(env, key, range(1), "--delay", "3s")
    code, took, log = burst(env, tmp_path / "w.log", 60)
    assert code == 0, log[-2000:]
    assert {int(k): int(v) for k, v in r.hgetall(key).items()} == {0: 1}, "the delayed task did not run"
    assert took >= 2, "it ran before its delay was over?"
