"""Two scheduler processes, one every-second schedule: each occurrence fired exactly once when the leader is
killed (SIGKILL) or stopped past its lease and continued (SIGSTOP/SIGCONT). Real processes, the real Redis
and RabbitMQ; the fired tasks are read from the work queue (id, headers, publish time)."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest
import redis as redis_sync

from support.queues import queue_state
from support.waiting import wait_until
from support.workers import stop_all

from .conftest import Fired, drain
from .procs import leader_is, scheduler_env, start_scheduler, wait_leader, wait_phase

pytestmark = pytest.mark.slow

LEASE = 2.0


def _fired_count(amqp_url: str, queue: str) -> int:
    return (queue_state(amqp_url, queue) or (0, 0))[0]


def _check_exactly_once(fired: list[Fired]) -> list[int]:
    occurrences = [f.occurrence for f in fired]
    assert len(occurrences) == len(set(occurrences)), f"duplicates: {sorted(occurrences)}"
    ordered = sorted(occurrences)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert set(gaps) == {1000}, f"a missing occurrence: {ordered}"
    assert all(f.id == f"tick:{f.occurrence}" and f.schedule == "tick" for f in fired)
    return ordered


def test_sigkill_of_the_leader_loses_and_doubles_nothing(
    amqp_url: str, redis_url: str, unique: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    env = scheduler_env(amqp_url, redis_url, unique)
    queue = f"{unique}.q.default"
    a = start_scheduler(env, tmp_path / "a.log", lease=LEASE)
    procs = [a]
    try:
        wait_leader(r, unique, a.proc.pid)
        b = start_scheduler(env, tmp_path / "b.log", lease=LEASE)
        procs.append(b)
        wait_until(lambda: _fired_count(amqp_url, queue) >= 8, 30, "8 fires from the first leader")
        wait_phase(0.5)
        killed_at = time.time()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        wait_leader(r, unique, b.proc.pid, within=LEASE * 3)
        wait_until(lambda: _fired_count(amqp_url, queue) >= 20, 30, "20 fires in all")
    finally:
        stop_all(procs)
    fired = drain(amqp_url, queue)
    ordered = _check_exactly_once(fired)
    assert len(ordered) >= 20
    # the occurrences due while no one led were fired by b within about a lease of a's death
    caught = [f for f in fired if killed_at * 1000 < f.occurrence < killed_at * 1000 + LEASE * 1000]
    assert caught, "no occurrence fell while no scheduler led"
    for f in caught:
        late = int(f.headers["x-sluice-created-at"]) - f.occurrence
        assert late <= (LEASE + LEASE / 3 + 1.0) * 1000, (late, b.stderr()[-2000:])
    assert b.proc.returncode == 0, b.stderr()[-2000:]


def test_a_leader_stopped_past_its_lease_and_continued_fires_no_duplicate(
    amqp_url: str, redis_url: str, unique: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    env = scheduler_env(amqp_url, redis_url, unique)
    queue = f"{unique}.q.default"
    a = start_scheduler(env, tmp_path / "a.log", lease=LEASE)
    procs = [a]
    try:
        wait_leader(r, unique, a.proc.pid)
        b = start_scheduler(env, tmp_path / "b.log", lease=LEASE)
        procs.append(b)
        wait_until(lambda: _fired_count(amqp_url, queue) >= 5, 30, "5 fires from the first leader")
        wait_phase(0.5)
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            wait_leader(r, unique, b.proc.pid, within=LEASE * 3)  # a's lease expired: b leads
            time.sleep(LEASE)  # b fires a few while a is stopped
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)  # a wakes up believing it leads
        time.sleep(LEASE * 2)  # both run: a must find out it does not lead before it fires
        assert leader_is(r, unique, b.proc.pid)
    finally:
        codes = stop_all(procs)
    ordered = _check_exactly_once(drain(amqp_url, queue))
    assert len(ordered) >= 10
    assert codes == [0, 0], (a.stderr()[-2000:], b.stderr()[-2000:])
    assert "no longer the leader" in a.stderr()  # a found out from the lease, not from a fenced fire
