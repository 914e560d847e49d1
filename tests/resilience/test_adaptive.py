"""The adaptive (AIMD) rate: the model's rules on a fake clock, the script against the model with the
clock override, and the shared state on both backends."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.errors import ConfigError
from sluice.resilience import AdaptiveRate, Backend, FakeClock, KeySpace, MemoryBackend, Rate
from sluice.resilience._reference_adaptive import AIMDModel, AIMDParams
from sluice.resilience.adaptive import AdaptiveGCRALimiter, AdaptiveReading, adaptive_rates

from .conftest import Store
from .test_scripts_match_models import EPOCH, on_redis

params = st.builds(
    AIMDParams,
    declared=st.sampled_from([1.0, 7.0, 50.0, 1000.0]),
    floor=st.sampled_from([0.5, 1.0]),
    factor=st.sampled_from([0.5, 0.7, 0.9]),
    step=st.sampled_from([0.5, 1.0, 5.0, 33.3]),
    interval_us=st.sampled_from([1_000, 100_000, 5_000_000]),
    cooldown_us=st.sampled_from([0, 50_000, 1_000_000]),
)
ops = st.lists(
    st.tuples(st.integers(min_value=0, max_value=12_000_000), st.booleans()), min_size=1, max_size=60
)


@given(params, ops)
def test_the_rate_stays_between_floor_and_declared_and_moves_by_the_rules(
    p: AIMDParams, schedule: list[tuple[int, bool]]
) -> None:
    model, now = AIMDModel(), EPOCH
    for gap, signal in schedule:
        now += gap
        before = AIMDModel(model.rate, model.quiet_since, model.cut_at).decide(now, p, signal=False)[0]
        rate, cut, _ = model.decide(now, p, signal)
        assert min(p.floor, p.declared) <= rate <= p.declared
        if not signal:
            assert (rate, cut) == (before, 0)
        elif cut:
            assert rate == max(before * p.factor, p.floor)  # multiplicative decrease
        else:
            assert rate == before  # within the cooldown of the last cut: signals do not cut again


@given(params, st.integers(min_value=0, max_value=40))
def test_each_quiet_interval_adds_one_step_up_to_the_declared_rate(p: AIMDParams, intervals: int) -> None:
    model = AIMDModel()
    cut_to, _, _ = model.decide(EPOCH, p, signal=True)
    later = EPOCH + intervals * p.interval_us
    assert model.decide(later, p, signal=False)[0] == min(p.declared, cut_to + intervals * p.step)
    assert model.decide(later - 1, p, signal=False)[0] == min(
        p.declared, cut_to + max(0, intervals - 1) * p.step
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params, schedule=ops)
def test_aimd_script_matches_model(redis_url: str, p: AIMDParams, schedule: list[tuple[int, bool]]) -> None:
    async def body(client: Redis, keys: KeySpace) -> list[str]:
        aimd = AdaptiveRate(client, Rate(1, 1.0), keys=keys)  # its own params are replaced below
        aimd.params = p
        aimd._argv = {mode: p.argv(mode) for mode in ("s", "r")}
        model, now = AIMDModel(), EPOCH
        for gap, signal in schedule:
            now += gap
            got = await aimd._call("k", signal, now_us=now)
            assert (got.rate, int(got.cut), got.server_time_us) == model.decide(now, p, signal)
        return [aimd.key("k")]

    on_redis(redis_url, body)


async def test_a_signal_cuts_the_rate_for_every_worker(store: Store) -> None:
    one = AdaptiveRate(store.client, Rate(100, 1.0), keys=store.keys, cooldown=60.0)
    (other_client,) = store.clients(1)
    other = AdaptiveRate(other_client, Rate(100, 1.0), keys=store.keys, cooldown=60.0)
    fresh = await other.current("api")
    assert (fresh.rate, fresh.cut, fresh.reduced) == (100.0, False, False)
    cut = await one.throttled("api")
    assert cut.cut and cut.rate == 50.0
    seen = await other.current("api")
    assert seen.rate == 50.0 and seen.reduced and seen.limit == Rate(50, 1.0) and seen.per_second == 50.0
    again = await other.throttled("api")  # within the cooldown: one cut for a burst of 429s
    assert not again.cut and again.rate == 50.0
    assert await store.written() == {one.key("api")}
    assert 0 < await store.pttl(one.key("api")) <= 61_000  # until back at 100/s or the cooldown's end
    await one.reset("api")
    assert (await other.current("api")).rate == 100.0


async def test_quiet_intervals_raise_it_back_and_the_floor_holds() -> None:
    clock = FakeClock()
    aimd = AdaptiveRate(
        MemoryBackend(clock=clock), Rate(40, 1.0), step=4.0, interval=2.0, floor=3.0, cooldown=0.0
    )
    rates = [(await aimd.throttled("api")).rate for _ in range(6)]
    assert rates == [20.0, 10.0, 5.0, 3.0, 3.0, 3.0]
    clock.advance(1.9)
    assert (await aimd.current("api")).rate == 3.0  # not a whole quiet interval yet
    clock.advance(0.1)
    assert (await aimd.current("api")).rate == 7.0
    clock.advance(2.0 * 20)
    assert (await aimd.current("api")).rate == 40.0  # never above the declared rate
    small = await aimd.throttled("api")
    assert small.rate == 20.0
    assert small.limit == Rate(20, 1.0)


def test_bad_parameters_are_refused() -> None:
    backend = MemoryBackend()
    for bad in (
        {"factor": 1.0},
        {"factor": 0.0},
        {"step": 0.0},
        {"interval": math.inf},
        {"floor": 500.0},
        {"cooldown": -1.0},
    ):
        with pytest.raises(ConfigError):
            AdaptiveRate(backend, Rate(100, 1.0), **bad)  # type: ignore[arg-type]


# ---- GCRA at the adaptive rate (AdaptiveGCRALimiter, the gcra_aimd script)
limiter_ops = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3_000_000),
        st.sampled_from(["signal", "take", "take", "take", "peek", "take3"]),
    ),
    min_size=1,
    max_size=60,
)


async def _limiter_replies(
    client: Backend, keys: KeySpace, rate: Rate, burst: int, ops: list[tuple[int, str]]
) -> list[str]:
    """The replies of the adaptive limiter's script and of the AIMD script, on one schedule and clock."""
    aimd = AdaptiveRate(client, rate, keys=keys, step=rate.limit / 4, interval=1.0, cooldown=0.2)
    lim = AdaptiveGCRALimiter(client, aimd, burst=burst, keys=keys)
    now, out = EPOCH, []
    for gap, op in ops:
        now += gap
        if op == "signal":
            got = await aimd._call("k", True, now_us=now)
            out.append(f"aimd {got.rate!r} {got.cut}")
        else:
            cost, peek = (3, False) if op == "take3" else (1, op == "peek")
            out.append(" ".join(map(str, await lim._call("k", cost, peek, now_us=now))))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.builds(Rate, st.sampled_from([1, 7, 20, 400]), st.sampled_from([0.25, 1.0, 60.0])),
    burst=st.sampled_from([1, 5, 20]),
    schedule=limiter_ops,
)
def test_the_adaptive_limiter_script_matches_the_models(
    redis_url: str, rate: Rate, burst: int, schedule: list[tuple[int, str]]
) -> None:
    """Redis' gcra_aimd against the in-memory backend (GCRAModel at AIMDModel's rate), reply for reply."""
    seen: list[list[str]] = []

    async def body(client: Redis, keys: KeySpace) -> list[str]:
        seen.append(await _limiter_replies(client, keys, rate, burst, schedule))
        return [keys.key("gcra", "k"), keys.key("aimd", "k")]

    on_redis(redis_url, body)
    memory = asyncio.run(_limiter_replies(MemoryBackend(), KeySpace("m"), rate, burst, schedule))
    assert seen[0] == memory


async def _admitted(lim: AdaptiveGCRALimiter, clock: FakeClock, seconds: float, name: str = "api") -> int:
    """Units taken in ``seconds``, one try every millisecond (after the bucket's saved-up burst is spent)."""
    n = 0
    for _ in range(round(seconds * 1000)):
        n += (await lim.try_acquire(name)).allowed
        clock.advance(0.001)
    return n


async def test_every_limiter_admits_at_the_cut_rate_and_climbs_back() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    aimd = AdaptiveRate(backend, Rate(100, 1.0), step=10.0, interval=5.0, cooldown=0.0)
    lim = AdaptiveGCRALimiter(backend, aimd)
    other = AdaptiveGCRALimiter(backend, AdaptiveRate(backend, Rate(100, 1.0)))  # another worker
    await _admitted(lim, clock, 2.0)  # the saved-up burst spent: from here on, the steady rate
    assert await _admitted(lim, clock, 2.0) == 200
    await aimd.throttled("api")  # 100 -> 50 for every limiter of the name
    assert await _admitted(other, clock, 2.0) in (99, 100, 101)
    assert await _admitted(lim, clock, 4.0) in (209, 210, 211)  # 3 s at 50/s, then 60/s: 5 s quiet
    await aimd.throttled("api")
    await aimd.throttled("api")  # 60 -> 30 -> 15
    assert (await aimd.current("api")).rate == 15.0
    assert await _admitted(lim, clock, 2.0) in (29, 30, 31)
    assert await _admitted(lim, clock, 1.0, "other") >= 100  # another name: its own, declared rate


async def test_adaptive_rates_lists_the_names_below_their_declared_rate(store: Store) -> None:
    aimd = AdaptiveRate(store.client, Rate(60, 60.0), keys=store.keys, step=6.0, interval=5.0)
    assert await adaptive_rates(store.client, keys=store.keys) == []
    await aimd.throttled("up.call")
    await aimd.throttled("up.call:acme")
    await aimd.current("up.call:never")  # a read writes nothing
    got = await adaptive_rates(store.client, keys=store.keys)
    assert got == [
        AdaptiveReading("up.call", 30.0, 60.0, 60.0),
        AdaptiveReading("up.call:acme", 30.0, 60.0, 60.0),
    ]
    assert got[0].per_second == 0.5
    await aimd.reset("up.call")
    assert [a.name for a in await adaptive_rates(store.client, keys=store.keys)] == ["up.call:acme"]
