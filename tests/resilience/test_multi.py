"""A batch as one script call (``_multi.MultiScript``): the same answers as a pipeline, one command."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis

from sluice.resilience import IdempotencyStore, KeySpace, _lua
from sluice.resilience._scripts import Call, ScriptRunner
from sluice.resilience._wire import packed

from .conftest import ThrowawayRedis

NOW = "1700000000000000"  # a fixed server clock (µs) for the time-based scripts: replies are exact
LEASE = 30_000_000

# one step: (what, key number, token number)
steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("claim", "complete", "complete_result", "release", "renew", "gcra", "window"),
                *("sliding", "freeze", "gcra_frozen", "window_frozen", "sliding_frozen"),
            ]
        ),
        st.integers(0, 2),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=40,
)


def _calls(prefix: str, plan: list[tuple[str, int, int]]) -> list[Call]:
    out: list[Call] = []
    for what, k, t in plan:
        key, token = f"{prefix}:{{k{k}}}", f"tok{t}"
        if what == "claim":
            out.append((_lua.CLAIM, [key], ["", token, LEASE]))
        elif what == "complete":
            out.append((_lua.CLAIM_COMPLETE, [key], ["", token, 3 * LEASE, 0, b""]))
        elif what == "complete_result":
            out.append((_lua.CLAIM_COMPLETE, [key], ["", token, 3 * LEASE, 1, b"r\x00" + token.encode()]))
        elif what == "release":
            out.append((_lua.CLAIM_RELEASE, [key], ["", token]))
        elif what == "renew":
            out.append((_lua.CLAIM_RENEW, [key], ["", token, LEASE]))
        elif what == "gcra":
            out.append((_lua.GCRA, [key + ":g"], [NOW, "100000 300000 1 0"]))
        elif what == "window":
            out.append((_lua.WINDOW, [key + ":w"], [NOW, "1000000 3 1 0"]))
        elif what == "sliding":
            out.append((_lua.SLIDING_LOG, [key + ":s"], [NOW, "1000000 3 1 0"]))
        elif what == "freeze":  # freezes key k (token t: how long) for the frozen decisions after it
            out.append((_lua.FREEZE, [key + ":f"], [NOW, 1_000_000 * t, f"r{t}"]))
        else:  # a decision reading key k's freeze (two keys, one call)
            script, part, params = {
                "gcra_frozen": (_lua.GCRA, ":g", "100000 300000 1 0"),
                "window_frozen": (_lua.WINDOW, ":w", "1000000 3 1 0"),
                "sliding_frozen": (_lua.SLIDING_LOG, ":s", "1000000 3 1 0"),
            }[what]
            out.append((script, [key + part, key + ":f"], [NOW, params]))
    return out


def _comparable(reply: Any) -> Any:
    """A reply with what depends on the moment removed: the milliseconds left of an in-progress claim."""
    if isinstance(reply, list) and reply and reply[0] == 2 and len(reply) == 2:
        return [2, "ms left"]
    if isinstance(reply, rexc.ResponseError):
        return ("error", type(reply).__name__, str(reply))
    return reply


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
async def test_a_batch_answers_as_the_same_calls_pipelined(
    plan: list[tuple[str, int, int]], redis: Redis, keys: KeySpace
) -> None:
    runner = ScriptRunner(redis)
    n = await redis.incr(keys.key("n", "examples"))
    try:
        piped = await runner.run_many(_calls(keys.key("p", str(n)), plan))
        one = await runner.run_many(_calls(keys.key("m", str(n)), plan), _lua.MULTI)
    finally:
        await runner.aclose()
    assert [_comparable(r) for r in one] == [_comparable(r) for r in piped]


async def test_a_batch_is_one_command_on_the_server(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    runner = ScriptRunner(client)
    try:
        calls = _calls("c", [("claim", i % 3, i) for i in range(50)])
        await runner.run_many(calls[:2], _lua.MULTI)  # loads the scripts (NOSCRIPT, then EVALSHA)
        await runner.run_many(calls[:2])
        await client.config_resetstat()
        replies = await runner.run_many(calls[2:], _lua.MULTI)
        stats = await client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert replies[:1] == [1] and len(replies) == 48
        await client.config_resetstat()
        await runner.run_many(calls[2:])  # without the multi script: a pipeline of 48
        stats = await client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 48
    finally:
        await runner.aclose()
        await client.aclose()


async def test_an_error_in_one_call_is_that_calls_answer_and_the_rest_still_run(
    redis: Redis, keys: KeySpace
) -> None:
    runner = ScriptRunner(redis)
    wrong = keys.key("idem", "{wrong}")
    await redis.set(wrong, "a string, not a hash")
    calls: list[Call] = [
        (_lua.CLAIM, [keys.key("idem", "{a}")], ["", "t1", LEASE]),
        (_lua.CLAIM, [wrong], ["", "t2", LEASE]),
        (_lua.CLAIM, [keys.key("idem", "{b}")], ["", "t3", LEASE]),
    ]
    try:
        first, bad, last = await runner.run_many(calls, _lua.MULTI)
    finally:
        await runner.aclose()
    assert first == 1 and last == 1
    assert isinstance(bad, rexc.ResponseError) and "WRONGTYPE" in str(bad)


async def test_a_flushed_multi_script_is_loaded_again(throwaway_redis: ThrowawayRedis) -> None:
    client = Redis.from_url(throwaway_redis.url)
    runner = ScriptRunner(client)
    try:
        assert await runner.run_many(_calls("f", [("claim", 0, 0), ("claim", 1, 1)]), _lua.MULTI) == [1, 1]
        await client.script_flush()
        fresh, held = await runner.run_many(_calls("f", [("claim", 2, 0), ("claim", 0, 1)]), _lua.MULTI)
        assert fresh == 1 and held[0] == 2 and 25_000 < held[1] <= 30_000
    finally:
        await runner.aclose()
        await client.aclose()


async def test_without_the_lean_transport_a_batch_stays_a_pipeline(redis_url: str, keys: KeySpace) -> None:
    """A blocking pool (like a cluster client) never gets a multi-key call: its keys span slots."""
    client = Redis.from_pool(BlockingConnectionPool.from_url(redis_url, max_connections=4))
    runner = ScriptRunner(client)
    assert runner._wire is None
    try:
        got = await runner.run_many(
            _calls(keys.key("b", "x"), [("claim", 0, 0), ("claim", 0, 1)]), _lua.MULTI
        )
    finally:
        await client.aclose()
    assert got[0] == 1 and got[1][0] == 2


@pytest.mark.parametrize("coalesce", [True, False])
async def test_concurrent_claims_through_the_store_keep_their_answers(
    redis: Redis, keys: KeySpace, coalesce: bool
) -> None:
    """200 claims at once on 100 keys (two per key): one of each pair wins, whichever path carries them.

    The answers are the contract here, not the latency: without coalescing 200 calls open up to 200
    connections at once, which on a loaded 2-core CI machine took longer than the default 0.5 s deadline
    (the deadline has its own tests), so this test gives the store a generous one.
    """
    async with IdempotencyStore(redis, keys=keys, coalesce=coalesce, timeout=10.0) as store:
        got = await asyncio.gather(*(store.claim(f"k{i // 2}") for i in range(200)))
        kinds = [type(g).__name__ for g in got]
        assert kinds.count("Claimed") == 100 and kinds.count("InProgress") == 100
        for i in range(0, 200, 2):
            assert {kinds[i], kinds[i + 1]} == {"Claimed", "InProgress"}


@given(
    items=st.lists(
        st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(-5, 10**12)), max_size=8
    )
)
def test_packed_arguments_go_out_as_the_same_bytes(items: list[Any]) -> None:
    """A call whose keys and arguments carry their RESP (``Packed``) packs, in a batch and in a cluster
    node's batch, to exactly the bytes of the same call given as plain lists."""
    script = _lua.CLAIM
    plain: Call = (script, ["k:{1}", "k:{1}:h"], items)
    pre: Call = (script, packed(["k:{1}", "k:{1}:h"]), packed(items))
    other: Call = (_lua.CLAIM_RELEASE, ["k:{2}"], ["", "t"])
    assert _lua.MULTI.pack([other, pre, other]) == _lua.MULTI.pack([other, plain, other])
    assert _lua.MULTI.pack_node([pre, other]) == _lua.MULTI.pack_node([plain, other])
