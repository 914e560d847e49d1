"""`sluice metrics` on a Redis of a million task records: its Redis figures stay live.

Breakers, freezes and adaptive rates are found by ``SCAN``, which walks the whole keyspace; on a million
keys one pass takes seconds (3.4 s measured here). Seen before the scans had a task of their own: every
Redis read of the service timed out inside its 2 s bound, so it said Redis was down (``redis_up``
false) and showed no counts, limits or breakers at all while Redis answered. A private redis-server (the
shared one is not filled with a million keys), the real RabbitMQ, the real service."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis as redis_sync
from fleet_helpers import env_for, start_service, until

from resilience.conftest import ThrowawayRedis, throwaway_redis
from sluice.resilience import KeySpace
from sluice.settings import Settings
from support.workers import run_sluice

__all__ = ["throwaway_redis"]

RECORDS = 1_000_000
_FILL = "for i = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. i .. '}', '1') end return 1"


def test_a_million_task_records_do_not_blind_the_service(
    throwaway_redis: ThrowawayRedis, topology: Settings, tmp_path: Path
) -> None:
    prefix = f"big{uuid.uuid4().hex[:8]}"
    r = redis_sync.Redis.from_url(throwaway_redis.url)
    try:
        for _ in range(RECORDS // 200_000):  # task-record-like keys, 200,000 a script
            r.eval(_FILL, 0, f"{prefix}:task:{{{uuid.uuid4().hex}-", 200_000)
        keys = KeySpace(prefix)
        r.hset(keys.key("breaker", "payments"), "state", "o")
        r.hset(keys.key("limits", "overrides"), "demo.echo", json.dumps({"rate": "600/min", "burst": 5}))
        assert r.dbsize() == RECORDS + 2
    finally:
        r.close()
    env = env_for(topology.amqp_url, throwaway_redis.url, prefix, SLUICE_QUEUE_TYPE="classic")
    cancel = run_sluice(env, "task", "cancel", "some-task")
    assert cancel.returncode == 0, cancel.stderr
    service = start_service(env, tmp_path / "metrics.log", "--alive-after", "2", "--interval", "0.5")
    try:
        # the figures that name their keys: at the first reads, whatever the keyspace holds
        first = until(lambda: (d := service.summary())["redis_up"] is not None and d, seconds=20)
        assert first["redis_up"] is True, first
        handles = until(
            lambda: (h := service.summary()["totals"]["task_handles"])["cancels_recorded"] is not None and h,
            seconds=20,
        )
        assert handles["cancels_recorded"] == 1, handles
        # the scanned ones: once a pass over the million keys ended
        got = until(lambda: (d := service.summary())["breakers"] and d, seconds=60)
        assert got["breakers"] == [{"name": "payments", "state": "open"}], got
        assert got["redis_up"] is True
        samples = service.samples()
        assert samples[("sluice_redis_up", ())] == 1
        assert samples[("sluice_breaker_state", (("breaker", "payments"),))] == 1
        assert samples[("sluice_rate_limit_override_per_second", (("limit", "demo.echo"),))] == 10
    finally:
        assert service.stop() == 0, service.log.read_text()
