"""``SLUICE_GC_THRESHOLD``: the worker's garbage collector, through the installed console script.

The worker freezes its startup heap and spaces young collections ``SLUICE_GC_THRESHOLD`` allocations apart
(:mod:`sluice._gc`); 0 leaves Python's collector as it is; a bad value is one error line, exit 1. A worker
so tuned still runs every task (published here by ``sluice publish``, drained by ``sluice worker --burst``).
"""

from __future__ import annotations

import pytest

from sluice.topology import Topology
from support.queues import queue_state
from support.workers import run_sluice, worker_env


def _drained(env: dict[str, str], n: int) -> str:
    """Publish ``n`` demo tasks, drain them with a burst worker (exit 0): the worker's log."""
    published = run_sluice(env, "publish", "demo.noop", "--count", str(n))
    assert published.returncode == 0, published.stderr
    worker = run_sluice(env, "worker", "--burst", "--concurrency", "8")
    assert worker.returncode == 0, worker.stderr
    return worker.stderr


@pytest.mark.parametrize("threshold", ["12345", "0"])
def test_worker_tunes_gc_and_runs_tasks(amqp_url: str, redis_url: str, unique: str, threshold: str) -> None:
    env = worker_env(amqp_url, redis_url, unique, SLUICE_GC_THRESHOLD=threshold, SLUICE_LOG_LEVEL="INFO")
    log = _drained(env, 50)
    if threshold == "0":
        assert "gc: left as it is (SLUICE_GC_THRESHOLD=0)" in log, log
        assert "startup objects frozen" not in log, log
    else:
        assert "startup objects frozen, young collections every 12345 allocations" in log, log
    assert "Traceback" not in log, log
    dlq = run_sluice(env, "dlq", "ls", "--json")
    assert dlq.returncode == 0, dlq.stderr
    assert dlq.stdout.strip() == ""  # nothing dead-lettered (one JSON line a dead letter)
    state = queue_state(amqp_url, Topology(prefix=unique).queue("default"))
    assert state is not None and state[0] == 0  # every task acked


@pytest.mark.parametrize("bad", ["-1", "10000001", "many"])
def test_bad_gc_threshold_is_one_line_exit_1(amqp_url: str, redis_url: str, unique: str, bad: str) -> None:
    env = worker_env(amqp_url, redis_url, unique, SLUICE_GC_THRESHOLD=bad)
    r = run_sluice(env, "worker", "--burst")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sluice: error: "), r.stderr
    assert "gc_threshold" in lines[0], lines[0]
