"""Against the fake upstream (tests/support/fake_upstream.py), over real HTTP on 127.0.0.1: every way it
writes its throttling answer is read by ``raise_for_throttle``; and a limit set to the upstream's own,
three clients at once: the exact sliding window gets no 429, GCRA with its default burst gets some."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from sluice.resilience import GCRALimiter, KeySpace, Rate, SlidingLogLimiter
from sluice.throttle import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, Throttled, raise_for_throttle
from support.fake_upstream import MODES, FakeUpstream, running_upstream


async def test_the_upstream_enforces_its_window_and_says_when(upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=upstream.url, headers={"X-API-Key": "k1"}) as client:
        answers = [await client.get("/v1/thing") for _ in range(25)]
        other = await client.get("/v1/thing", headers={"X-API-Key": "k2"})  # another key: its own window
        stats = (await client.get("/stats")).json()
    assert [a.status_code for a in answers] == [200] * 20 + [429] * 5
    assert answers[0].json() == {"ok": True, "key": "k1", "n": 1}
    assert other.status_code == 200
    assert stats == {"admitted": {"k1": 20, "k2": 1}, "refused": {"k1": 5}}
    with pytest.raises(Throttled) as info:
        raise_for_throttle(answers[-1], scope="k1")
    assert 0 < info.value.retry_after <= 1.0 and info.value.status == 429 and info.value.scope == "k1"
    raise_for_throttle(answers[0])  # a 200 passes


@pytest.mark.parametrize("mode", MODES)
async def test_every_way_of_saying_when_is_handled(mode: str) -> None:
    with running_upstream(FakeUpstream(limit=1, period=60.0, mode=mode)) as up:
        async with httpx.AsyncClient(base_url=up.url) as client:
            assert (await client.get("/")).status_code == 200
            refused = await client.get("/")
    assert refused.status_code == 429
    with pytest.raises(Throttled) as info:
        raise_for_throttle(refused)
    got = info.value.retry_after
    want = {
        "seconds": (59.0, 60.0),
        "date": (58.0, 60.0),  # whole seconds, read against this machine's wall clock
        "past": (0.0, 0.0),
        "far": (MAX_RETRY_AFTER, MAX_RETRY_AFTER),
        "garbage": (DEFAULT_RETRY_AFTER, DEFAULT_RETRY_AFTER),
        "none": (DEFAULT_RETRY_AFTER, DEFAULT_RETRY_AFTER),
        "reset-epoch": (58.0, 61.0),
        "reset-delta": (59.0, 60.0),
    }[mode]
    assert want[0] <= got <= want[1], (mode, refused.headers, got)


LIMIT, CLIENTS, SECONDS = 20, 3, 3.0
Make = Callable[[Redis, KeySpace], GCRALimiter | SlidingLogLimiter]


async def _run(make: Make, redis_url: str, keys: KeySpace) -> tuple[int, int, int]:
    """CLIENTS clients (each with its own Redis client and limiter, as separate workers would have) for
    SECONDS: take a unit of the shared limit, then call the upstream. Answers (200s, 429s, the most 200s
    in any second at the upstream)."""
    up = FakeUpstream(limit=LIMIT, period=1.0)
    with running_upstream(up):
        clients = [Redis.from_url(redis_url) for _ in range(CLIENTS)]
        limiters = [make(c, keys) for c in clients]
        end = time.monotonic() + SECONDS

        async def one(limiter: GCRALimiter | SlidingLogLimiter, http: httpx.AsyncClient) -> None:
            while time.monotonic() < end:
                await limiter.acquire("upstream")
                await http.get("/v1/thing", headers={"X-API-Key": "shared"})

        try:
            async with httpx.AsyncClient(base_url=up.url) as http:
                # connections opened first (GET /stats counts for nothing): a new connection's set-up
                # delays the first requests and bunches them up with later ones at the upstream
                await asyncio.gather(*(http.get("/stats") for _ in limiters))
                await asyncio.gather(*(one(lim, http) for lim in limiters))
        finally:
            for c in clients:
                await c.aclose()
    return up.total_admitted, up.total_refused, up.most_in_a_window("shared")


def _report(what: str, got: tuple[int, int, int]) -> None:
    print(
        f"{what}, {CLIENTS} clients, {SECONDS} s: {got[0]} answered, {got[1]} refused (429), busiest second {got[2]}"
    )


@pytest.mark.slow
async def test_the_sliding_limiter_at_the_upstreams_limit_gets_no_429(redis_url: str, keys: KeySpace) -> None:
    """20/s against an upstream's 20/s, with a 50 ms margin for the time between admission and arrival."""
    got = await _run(
        lambda c, k: SlidingLogLimiter(c, Rate(LIMIT, 1.0), margin=0.05, keys=k, timeout=5.0), redis_url, keys
    )
    _report(f"sliding {LIMIT}/s, margin 50 ms", got)
    admitted, refused, most = got
    assert (refused, most) == (0, LIMIT), got
    assert admitted >= LIMIT * SECONDS * 0.9, got


@pytest.mark.slow
async def test_without_a_margin_the_arrival_jitter_shows(redis_url: str, keys: KeySpace) -> None:
    """Exact at admission on Redis' clock; the upstream counts arrivals, a few ms later each, not all the
    same: a few 429s at the window's edges (reported), never the excess GCRA's burst lets through."""
    got = await _run(
        lambda c, k: SlidingLogLimiter(c, Rate(LIMIT, 1.0), keys=k, timeout=5.0), redis_url, keys
    )
    _report(f"sliding {LIMIT}/s, no margin", got)
    admitted, refused, _ = got
    assert refused <= 0.15 * (admitted + refused)


@pytest.mark.slow
async def test_gcra_with_its_default_burst_gets_429s(redis_url: str, keys: KeySpace) -> None:
    got = await _run(lambda c, k: GCRALimiter(c, Rate(LIMIT, 1.0), keys=k, timeout=5.0), redis_url, keys)
    _report(f"gcra {LIMIT}/s, burst {LIMIT} (the default)", got)
    assert got[1] > 0
