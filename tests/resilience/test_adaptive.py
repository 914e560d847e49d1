"""The adaptive (AIMD) rate: the model's rules on a fake clock, the script against the model with the
clock override, and the shared state on both backends."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sluice.errors import ConfigError
from sluice.resilience import AdaptiveRate, FakeClock, KeySpace, MemoryBackend, Rate
from sluice.resilience._reference_adaptive import AIMDModel, AIMDParams

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
