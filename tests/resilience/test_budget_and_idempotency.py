"""The fleet retry budget and the idempotency store, on the real Redis and on the in-memory backend
(on a FakeClock: no real-time wait)."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluice.resilience import (
    Claimed,
    ClaimLost,
    Done,
    FixedBackoff,
    IdempotencyStore,
    InProgress,
    RetryBudget,
    RetryBudgetExhausted,
    RetryPolicy,
)

from .conftest import Store

T0 = 1_700_000_000_000_000
S = 1_000_000


async def test_budget_allows_a_fraction_of_recent_calls_plus_a_floor(store: Store) -> None:
    budget = RetryBudget(store.client, "svc", ratio=0.2, min_per_second=0.5, window=4, keys=store.keys)
    # floor: 0.5/s over a 4 s window = 2 retries with no calls at all
    assert [(await budget._call("retry", 0, now_us=T0))[0] for _ in range(3)] == [1, 1, 0]
    await budget._call("call", 50, now_us=T0)  # 20 % of 50 = 10 more
    granted = [(await budget._call("retry", 0, now_us=T0 + 1))[0] for _ in range(12)]
    assert granted == [1] * 10 + [0] * 2
    # 5 s later the calls and retries left the window: only the floor again
    later = [(await budget._call("retry", 0, now_us=T0 + 5 * S))[0] for _ in range(3)]
    assert later == [1, 1, 0]
    assert 0 < await store.pttl(budget.key) <= 5_000


async def test_a_refused_retry_on_a_new_budget_leaves_no_key_without_a_ttl(store: Store) -> None:
    """A budget that never saw a call refuses a retry once its floor is spent; the bookkeeping it writes
    for that refusal must expire like the rest (it once stayed forever: a hash with no TTL per name)."""
    budget = RetryBudget(store.client, "fresh", ratio=0.0, min_per_second=0.0, window=5, keys=store.keys)
    assert (await budget._call("retry", 0, now_us=T0))[0] == 0
    left = await store.pttl(budget.key)
    assert left == -2 or 0 < left <= 6_000, left  # no key at all, or one that expires (-1: kept forever)


async def test_spend_raises_when_the_budget_is_spent(store: Store) -> None:
    budget = RetryBudget(store.client, "svc", ratio=0.0, min_per_second=0.2, window=5, keys=store.keys)
    await budget.spend()  # 0.2/s x 5 s: one retry
    with pytest.raises(RetryBudgetExhausted) as info:
        await budget.spend()
    assert info.value.retry_after == 1.0


async def test_budget_is_shared_and_stops_retries_fleet_wide(store: Store) -> None:
    clients = store.clients(2)
    budgets = [
        RetryBudget(c, "svc", ratio=0.0, min_per_second=0.3, window=10, keys=store.keys) for c in clients
    ]
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


async def test_claim_then_complete_then_done(store: Store) -> None:
    idem = IdempotencyStore(store.client, keys=store.keys, lease=10)
    first = await idem.claim("order-1")
    assert isinstance(first, Claimed)
    second = await idem.claim("order-1")
    assert isinstance(second, InProgress)
    assert 9 < second.retry_after <= 10
    await idem.complete("order-1", first.token, b'{"charge": "ch_1"}')
    assert await idem.claim("order-1") == Done(b'{"charge": "ch_1"}')
    assert 0 < await store.pttl(idem.key("order-1")) <= 24 * 3600 * 1000
    assert b"{order-1}" in idem.key("order-1").encode()


async def test_a_claim_sent_twice_with_its_token_is_still_the_senders(store: Store) -> None:
    """A resend after a lost reply (the script ran, the answer did not arrive) must not lock its sender out."""
    tokens = iter(["tok-a", "tok-a", "tok-b", "tok-c"])
    idem = IdempotencyStore(store.client, keys=store.keys, lease=10, token_factory=lambda: next(tokens))
    assert await idem.claim("order-2") == Claimed("tok-a")
    assert await idem.claim("order-2") == Claimed("tok-a")  # the same claim again
    assert isinstance(await idem.claim("order-2"), InProgress)  # anyone else still waits
    await idem.complete("order-2", "tok-a")
    assert await idem.claim("order-2") == Done(None)


async def test_release_lets_the_next_claimant_in_and_stale_tokens_are_refused(store: Store) -> None:
    idem = IdempotencyStore(store.client, keys=store.keys)
    first = await idem.claim("job")
    assert isinstance(first, Claimed)
    await idem.release("job", first.token)
    second = await idem.claim("job")
    assert isinstance(second, Claimed)
    with pytest.raises(ClaimLost):
        await idem.complete("job", first.token)
    await idem.complete("job", second.token)
    assert await idem.claim("job") == Done(None)


async def test_an_expired_claim_can_be_taken_over(store: Store) -> None:
    idem = IdempotencyStore(store.client, keys=store.keys, lease=0.05)
    first = await idem.claim("job")
    assert isinstance(first, Claimed)
    for _ in range(100):  # bounded wait for the 50 ms lease to run out
        taken = await idem.claim("job")
        if isinstance(taken, Claimed):
            break
        await store.elapse(0.01)
    else:
        pytest.fail("the claim never expired")
    with pytest.raises(ClaimLost):
        await idem.complete("job", first.token)
    await idem.renew("job", taken.token)
    await idem.complete("job", taken.token, b"ok")


async def test_exactly_one_of_many_concurrent_claimants_wins(store: Store) -> None:
    idems = [IdempotencyStore(c, keys=store.keys) for c in store.clients(3)]
    results = await asyncio.gather(*(idems[i % 3].claim("payment-9") for i in range(60)))
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert sum(isinstance(r, InProgress) for r in results) == 59


async def test_oversized_results_are_refused(store: Store) -> None:
    idem = IdempotencyStore(store.client, keys=store.keys, max_result_bytes=8)
    claim = await idem.claim("k")
    assert isinstance(claim, Claimed)
    with pytest.raises(ValueError, match="byte cap"):
        await idem.complete("k", claim.token, b"x" * 9)


async def test_coalesced_claims_stay_exact_and_share_pipelines(store: Store) -> None:
    """With batching on: 60 claimants of one key, one winner; claims of distinct keys share round trips."""
    async with IdempotencyStore(store.client, keys=store.keys, coalesce=True) as idem:
        coalescer = idem._coalescer
        assert coalescer is not None
        results = await asyncio.gather(*(idem.claim("payment-9") for _ in range(60)))
        assert sum(isinstance(r, Claimed) for r in results) == 1
        assert sum(isinstance(r, InProgress) for r in results) == 59
        # the first claim went alone, the other 59 shared a few pipelines
        assert (coalescer.sent_alone, coalescer.batched_calls) == (1, 59)
        assert coalescer.batches <= 4
        claims = await asyncio.gather(*(idem.claim(f"order-{i}") for i in range(50)))
        assert all(isinstance(c, Claimed) for c in claims)
        assert coalescer.sent_alone + coalescer.batches < 60 + 50
        tokens = [c.token for c in claims if isinstance(c, Claimed)]
        await asyncio.gather(*(idem.complete(f"order-{i}", t, b"r%d" % i) for i, t in enumerate(tokens)))
        assert coalescer.sent_alone + coalescer.batches < 60 + 50 + 50
        assert await idem.claim("order-7") == Done(b"r7")
        # a stale token is still refused in a batch
        lost = await asyncio.gather(
            idem.complete("order-1", "stale"), idem.release("order-2", "stale"), return_exceptions=True
        )
        assert all(isinstance(e, ClaimLost) for e in lost)
