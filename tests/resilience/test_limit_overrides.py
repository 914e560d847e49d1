"""The run-time limit overrides as `sluice metrics` reads them: LimitStore.all() on the real Redis."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from sluice.limits import LimitStore
from sluice.policy import RateLimit


async def test_all_answers_the_good_overrides_and_warns_once_about_a_bad_one(
    redis: Redis, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = LimitStore(redis, unique)
    try:
        await store.set("demo.echo", RateLimit.parse("600/min", burst=5))
        await redis.hset(store.key, "demo.bad", "not json")
        with caplog.at_level(logging.WARNING, logger="sluice.limits"):
            for _ in range(3):  # a dashboard reads every second
                assert await store.all() == {"demo.echo": RateLimit(600, 60.0, 5)}
        warned = [r for r in caplog.records if "demo.bad" in r.getMessage()]
        assert len(warned) == 1
    finally:
        await redis.delete(store.key)
