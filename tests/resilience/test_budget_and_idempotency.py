"""The fleet retry budget and the idempotency store on the real Redis."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis

from sluice.resilience import (
    Claimed,
    ClaimLost,
    Done,
    FixedBackoff,
    IdempotencyStore,
    InProgress,
    KeySpace,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
)

T0 = 1_700_000_000_000_000
S = 1_000_000


async def test_budget_allows_a_fraction_of_recent_calls_plus_a_floor(redis: Redis, keys: KeySpace) -> None:
    budget = RetryBudget(redis, "svc", ratio=0.2, min_per_second=0.5, window=4, keys=keys)
    # floor: 0.5/s over a 4 s window = 2 retries with no calls at all
    assert [(await budget._call("retry", 0, now_us=T0))[0] for _ in range(3)] == [1, 1, 0]
    await budget._call("call", 50, now_us=T0)  # 20 % of 50 = 10 more
    granted = [(await budget._call("retry", 0, now_us=T0 + 1))[0] for _ in range(12)]
    assert granted == [1] * 10 + [0] * 2
    # 5 s later the calls and retries left the window: only the floor again
    later = [(await budget._call("retry", 0, now_us=T0 + 5 * S))[0] for _ in range(3)]
    assert later == [1, 1, 0]
    assert 0 < await redis.pttl(budget.key) <= 5_000


async def test_spend_raises_when_the_budget_is_spent(redis: Redis, keys: KeySpace) -> None:
    budget = RetryBudget(redis, "svc", ratio=0.0, min_per_second=0.2, window=5, keys=keys)
    await budget.spend()  # 0.2/s x 5 s: one retry
    with pytest.raises(RetryBudgetExhausted) as info:
        await budget.spend()
    assert info.value.retry_after == 1.0


async def test_budget_is_shared_and_stops_retries_fleet_wide(redis_url: str, keys: KeySpace) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    budgets = [RetryBudget(c, "svc", ratio=0.0, min_per_second=0.3, window=10, keys=keys) for c in clients]
    policy = RetryPolicy(max_attempts=10, backoff=FixedBackoff(0))
    attempts = 0

    async def failing() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("down")

    # 0.3/s x 10 s = 3 retries for the whole fleet: 2 "processes" x 2 calls get 4 first attempts + 3 retries
    for budget in budgets * 2:
        with pytest.raises(ConnectionError):
            await policy.retrying(budget=budget, rng=random.Random(0))(failing)
    assert attempts == 4 + 3
    for client in clients:
        await client.aclose()


async def test_claim_then_complete_then_done(redis: Redis, keys: KeySpace) -> None:
    store = IdempotencyStore(redis, keys=keys, lease=10)
    first = await store.claim("order-1")
    assert isinstance(first, Claimed)
    second = await store.claim("order-1")
    assert isinstance(second, InProgress)
    assert 9 < second.retry_after <= 10
    await store.complete("order-1", first.token, b'{"charge": "ch_1"}')
    assert await store.claim("order-1") == Done(b'{"charge": "ch_1"}')
    assert 0 < await redis.pttl(store.key("order-1")) <= 24 * 3600 * 1000
    assert b"{order-1}" in store.key("order-1").encode()


async def test_a_claim_sent_twice_with_its_token_is_still_the_senders(redis: Redis, keys: KeySpace) -> None:
    """A resend after a lost reply (the script ran, the answer did not arrive) must not lock its sender out."""
    tokens = iter(["tok-a", "tok-a", "tok-b", "tok-c"])
    store = IdempotencyStore(redis, keys=keys, lease=10, token_factory=lambda: next(tokens))
    assert await store.claim("order-2") == Claimed("tok-a")
    assert await store.claim("order-2") == Claimed("tok-a")  # the same claim again
    assert isinstance(await store.claim("order-2"), InProgress)  # anyone else still waits
    await store.complete("order-2", "tok-a")
    assert await store.claim("order-2") == Done(None)


async def test_release_lets_the_next_claimant_in_and_stale_tokens_are_refused(
    redis: Redis, keys: KeySpace
) -> None:
    store = IdempotencyStore(redis, keys=keys)
    first = await store.claim("job")
    assert isinstance(first, Claimed)
    await store.release("job", first.token)
    second = await store.claim("job")
    assert isinstance(second, Claimed)
    with pytest.raises(ClaimLost):
        await store.complete("job", first.token)
    await store.complete("job", second.token)
    assert await store.claim("job") == Done(None)


async def test_an_expired_claim_can_be_taken_over(redis: Redis, keys: KeySpace) -> None:
    store = IdempotencyStore(redis, keys=keys, lease=0.05)
    first = await store.claim("job")
    assert isinstance(first, Claimed)
    for _ in range(100):  # bounded wait for the 50 ms lease to run out
        taken = await store.claim("job")
        if isinstance(taken, Claimed):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the claim never expired")
    with pytest.raises(ClaimLost):
        await store.complete("job", first.token)
    await store.renew("job", taken.token)
    await store.complete("job", taken.token, b"ok")


async def test_exactly_one_of_many_concurrent_claimants_wins(redis_url: str, keys: KeySpace) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    stores = [IdempotencyStore(c, keys=keys) for c in clients]
    results = await asyncio.gather(*(stores[i % 3].claim("payment-9") for i in range(60)))
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert sum(isinstance(r, InProgress) for r in results) == 59
    for client in clients:
        await client.aclose()


async def test_oversized_results_are_refused(redis: Redis, keys: KeySpace) -> None:
    store = IdempotencyStore(redis, keys=keys, max_result_bytes=8)
    claim = await store.claim("k")
    assert isinstance(claim, Claimed)
    with pytest.raises(ValueError, match="byte cap"):
        await store.complete("k", claim.token, b"x" * 9)


async def test_coalesced_claims_stay_exact_and_share_pipelines(redis: Redis, keys: KeySpace) -> None:
    """With batching on: 60 claimants of one key, one winner; claims of distinct keys share round trips."""
    async with IdempotencyStore(redis, keys=keys, coalesce=True) as store:
        coalescer = store._coalescer
        assert coalescer is not None
        results = await asyncio.gather(*(store.claim("payment-9") for _ in range(60)))
        assert sum(isinstance(r, Claimed) for r in results) == 1
        assert sum(isinstance(r, InProgress) for r in results) == 59
        # the first claim went alone, the other 59 shared a few pipelines
        assert (coalescer.sent_alone, coalescer.batched_calls) == (1, 59)
        assert coalescer.batches <= 4
        claims = await asyncio.gather(*(store.claim(f"order-{i}") for i in range(50)))
        assert all(isinstance(c, Claimed) for c in claims)
        assert coalescer.sent_alone + coalescer.batches < 60 + 50
        tokens = [c.token for c in claims if isinstance(c, Claimed)]
        await asyncio.gather(*(store.complete(f"order-{i}", t, b"r%d" % i) for i, t in enumerate(tokens)))
        assert coalescer.sent_alone + coalescer.batches < 60 + 50 + 50
        assert await store.claim("order-7") == Done(b"r7")
        # a stale token is still refused in a batch
        lost = await asyncio.gather(
            store.complete("order-1", "stale"), store.release("order-2", "stale"), return_exceptions=True
        )
        assert all(isinstance(e, ClaimLost) for e in lost)
