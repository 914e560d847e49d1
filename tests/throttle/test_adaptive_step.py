"""The adaptive rate in the worker, in process against the real Redis (the pipelines ``sluice worker``
builds, two workers with their own Redis clients), and its spellings through the user's doors: the
decorator, ``RateLimit.parse``, and the installed ``sluice limits set``/``ls --json``.

(Real worker processes against a fake upstream: tests/throttle/test_fleet_throttle.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
import redis
from redis.asyncio import Redis

from sluice import Throttled, task
from sluice.errors import ConfigError
from sluice.policy import RateLimit
from sluice.resilience import AdaptiveRate, Freezes, KeySpace, Rate
from sluice.resilience.adaptive import AdaptiveGCRALimiter
from sluice_worker.outcome import ACK, THROTTLED, Deferred
from support.workers import SLUICE, worker_env

from .test_worker_steps import P, Worker, fleet  # noqa: F401 (the two workers' fixture)


def test_the_spellings_of_an_adaptive_limit() -> None:
    assert RateLimit.parse("200/s adaptive") == RateLimit(200, adaptive=True)
    assert RateLimit.parse("200/s gcra adaptive") == RateLimit(200, adaptive=True)
    assert RateLimit.parse("6000/min", adaptive=True) == RateLimit(6000, 60.0, adaptive=True)
    assert str(RateLimit(10, 5.0, adaptive=True)) == "10/5s adaptive"
    assert RateLimit.parse("50/s sliding") == RateLimit(50, window="sliding")  # unchanged
    for bad in ("50/s sliding adaptive", "50/s adaptive sliding", "50/s adaptive adaptive", "50/s fast"):
        with pytest.raises(ConfigError):
            RateLimit.parse(bad)
    with pytest.raises(ConfigError, match="sliding window cannot be adaptive"):
        RateLimit(50, window="sliding", adaptive=True)

    @task("t.spelled", rate_limit="80/s adaptive")
    async def spelled(p: P) -> None: ...

    assert spelled.policy.rate_limit == RateLimit(80, adaptive=True)


async def test_a_throttle_halves_the_fleets_rate_and_every_worker_admits_at_it(
    fleet: tuple[Worker, Worker, Freezes],  # noqa: F811 (the fixture imported above)
    unique: str,
) -> None:
    a, b, _ = fleet

    @task("t.adapt", rate_limit=RateLimit(100, adaptive=True, key="tenant"))
    async def adapt(p: P) -> None: ...

    assert await a.run(adapt, {"tenant": "acme"}) is ACK
    limiter = b.policies.cache.limiter(RateLimit(100, adaptive=True))
    assert isinstance(limiter, AdaptiveGCRALimiter)
    out = await a.run(adapt, {"tenant": "acme"}, fail=Throttled(retry_after=0.001, status=429))
    assert isinstance(out, Deferred) and out.reason == THROTTLED, out
    aimd = AdaptiveRate(b.client, Rate(100, 1.0), keys=KeySpace(unique))
    assert (await aimd.current("t.adapt:acme")).rate == 50.0, "the tenant's key: halved fleet-wide"
    assert (await aimd.current("t.adapt:other")).rate == 100.0, "another tenant keeps the declared rate"
    again = await b.run(adapt, {"tenant": "acme"}, fail=Throttled(retry_after=0.001, status=429))
    assert isinstance(again, Deferred)
    assert (await aimd.current("t.adapt:acme")).rate == 50.0, "a second 429 within the cooldown cuts nothing"
    # worker b admits at 50/s: the freeze (1 ms) has ended, so the bucket resumes empty, at the rate
    start = time.monotonic()
    taken = 0
    while time.monotonic() - start < 0.6:
        taken += (await limiter.try_acquire("t.adapt:acme", freeze="t.adapt:acme")).allowed
    assert 20 <= taken <= 40, taken  # 50/s for 0.6 s (the declared 100/s would be about 60)


def test_sluice_limits_set_and_ls_show_an_adaptive_limit(
    redis_url: str, amqp_url: str, unique: str, r: redis.Redis
) -> None:
    """Its keys (the override, the AIMD hashes) are under the test's prefix: ``r`` deletes them after."""
    env = worker_env(amqp_url, redis_url, unique, COLUMNS="200")  # a wide table

    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SLUICE, *args], env=env, capture_output=True, text=True, timeout=60)

    try:
        done = sluice("limits", "set", "up.call", "200/s adaptive")
        assert done.returncode == 0 and done.stdout.strip() == "up.call: 200/s adaptive", done.stderr
        bad = sluice("limits", "set", "up.call", "200/s sliding adaptive")
        assert bad.returncode == 2 and "cannot be adaptive" in bad.stderr
        (row,) = json.loads(sluice("limits", "ls", "--json").stdout)
        assert (row["rate"], row["window"], row["adaptive"]) == ("200/s", "gcra", True)
        assert row["effective_rate"] == row["adaptive_rate"] == 200.0  # not cut yet: the declared rate

        async def cut() -> None:
            client = Redis.from_url(redis_url)
            try:
                aimd = AdaptiveRate(client, Rate(200, 1.0), keys=KeySpace(unique))
                await aimd.throttled("up.call")
                await aimd.throttled("up.call:acme")  # a tenant's key: a row of its own
            finally:
                await client.aclose()

        asyncio.run(cut())
        rows = {row["key"]: row for row in json.loads(sluice("limits", "ls", "--json").stdout)}
        assert rows["up.call"]["adaptive_rate"] == rows["up.call"]["effective_rate"] == 100.0
        acme = rows["up.call:acme"]
        assert (acme["task"], acme["rate"], acme["adaptive"], acme["effective_rate"]) == (
            "up.call",
            "200/s",
            True,
            100.0,
        )
        table = sluice("limits", "ls").stdout
        assert "200/s gcra adaptive" in table, table
    finally:
        sluice("limits", "rm", "up.call")
    assert r.exists(f"{unique}:aimd:{{up.call}}")  # where the cut lives (deleted by the fixture)
