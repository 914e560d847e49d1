"""A broker outage delays fires, never loses or doubles them: a scheduler process on a PRIVATE RabbitMQ node
(tests/support/rabbit_node.py; never the default one), ``stop_app`` for 5 s, then ``start_app``: the
occurrences due meanwhile are published after it, each once (fires are recorded only after the confirm)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from support.queues import queue_state
from support.rabbit_node import RabbitNode, private_node
from support.waiting import wait_until
from support.workers import stop_all

from .conftest import drain
from .procs import scheduler_env, start_scheduler, wait_leader

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    with private_node() as n:
        yield n


def test_fires_due_during_a_broker_outage_go_out_after_it_once_each(
    node: RabbitNode, redis_url: str, unique: str, r: redis_sync.Redis, tmp_path: Path
) -> None:
    queue = f"{unique}.q.default"
    env = scheduler_env(node.url, redis_url, unique)
    s = start_scheduler(env, tmp_path / "s.log", lease=2.0)
    try:
        wait_leader(r, unique, s.proc.pid)
        wait_until(lambda: (queue_state(node.url, queue) or (0, 0))[0] >= 3, 30, "3 fires before the outage")
        node.stop_app()
        stopped = time.time()
        time.sleep(5)  # the outage: about 5 occurrences fall due
        node.start_app()
        started = time.time()
        wait_until(
            lambda: (queue_state(node.url, queue) or (0, 0))[0] >= 3 + 5 + 3,
            60,
            "the held-back fires and 3 more",
        )
    finally:
        (code,) = stop_all([s])
    fired = drain(node.url, queue)
    occurrences = sorted(f.occurrence for f in fired)
    assert len(occurrences) == len(set(occurrences)), f"duplicates: {occurrences}"
    assert {b - a for a, b in itertools.pairwise(occurrences)} == {1000}, occurrences
    during = [f for f in fired if stopped * 1000 + 500 < f.occurrence < started * 1000 - 500]
    assert len(during) >= 4, occurrences
    assert all(int(f.headers["x-sluice-created-at"]) >= started * 1000 - 1000 for f in during)
    assert code == 0, s.stderr()[-3000:]
    assert "not confirmed" in s.stderr()
