"""The reference models on a fake clock (pure Python, no Redis): the invariants the scripts must keep."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.resilience._reference import GCRAModel, SlidingWindowModel

# Integer emission intervals and integer times keep every double exact, so the bound is exact too.
emission = st.integers(min_value=1, max_value=2_000)
bursts = st.integers(min_value=1, max_value=8)
arrivals = st.lists(
    st.tuples(st.integers(min_value=0, max_value=3_000), st.integers(min_value=1, max_value=4)),
    min_size=1,
    max_size=80,
)


def schedule(gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(time, cost) pairs from (gap, cost) pairs, starting at a realistic epoch in µs."""
    now, out = 1_700_000_000_000_000, []
    for gap, cost in gaps:
        now += gap
        out.append((now, cost))
    return out


def fits_bound(admitted: list[tuple[int, int]], per_unit: int, burst: int) -> bool:
    """In every window [a_i, a_j]: total cost <= burst + (a_j - a_i) / per_unit."""
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            if total * per_unit > burst * per_unit + (admitted[j][0] - admitted[i][0]):
                return False
    return True


@given(emission, bursts, arrivals)
def test_gcra_never_admits_more_than_burst_plus_rate_times_window(
    per_unit: int, burst: int, gaps: list[tuple[int, int]]
) -> None:
    model = GCRAModel(per_unit, per_unit * burst)
    admitted = [(t, c) for t, c in schedule(gaps) if model.decide(t, c)[0]]
    assert fits_bound(admitted, per_unit, burst)


@given(emission, bursts, arrivals)
def test_gcra_never_refuses_conforming_traffic(
    per_unit: int, burst: int, gaps: list[tuple[int, int]]
) -> None:
    # keep only arrivals that fit the bound together with those kept before: conforming traffic
    conforming: list[tuple[int, int]] = []
    for arrival in schedule(gaps):
        if fits_bound([*conforming, arrival], per_unit, burst):
            conforming.append(arrival)
    model = GCRAModel(per_unit, per_unit * burst)
    assert all(model.decide(t, c)[0] == 1 for t, c in conforming)


@given(emission, bursts, arrivals)
def test_gcra_retry_after_is_exact(per_unit: int, burst: int, gaps: list[tuple[int, int]]) -> None:
    """A refused call fits at now + retry_after and not one µs earlier (when nothing else happens)."""
    model = GCRAModel(per_unit, per_unit * burst)
    for t, c in schedule(gaps):
        allowed, retry, *_ = model.decide(t, c)
        if allowed or retry < 0:
            continue
        assert GCRAModel(per_unit, per_unit * burst, model.tat).decide(t + retry, c, peek=True)[0] == 1
        assert GCRAModel(per_unit, per_unit * burst, model.tat).decide(t + retry - 1, c, peek=True)[0] == 0


@given(emission, bursts)
def test_gcra_cost_over_burst_never_fits(per_unit: int, burst: int) -> None:
    assert GCRAModel(per_unit, per_unit * burst).decide(1_000_000, burst + 1)[:2] == (0, -1)


@given(emission, bursts, arrivals)
def test_gcra_peek_changes_nothing(per_unit: int, burst: int, gaps: list[tuple[int, int]]) -> None:
    plain, peeked = GCRAModel(per_unit, per_unit * burst), GCRAModel(per_unit, per_unit * burst)
    for t, c in schedule(gaps):
        seen = peeked.decide(t, c, peek=True)
        assert seen[:3] == peeked.decide(t, c)[:3]
        plain.decide(t, c)
    assert plain.tat == peeked.tat


windows = st.integers(min_value=100, max_value=5_000)
limits = st.integers(min_value=1, max_value=20)


@settings(max_examples=200)
@given(windows, limits, arrivals)
def test_sliding_window_bounds(window: int, limit: int, gaps: list[tuple[int, int]]) -> None:
    """Each fixed window admits at most ``limit``; any window of the same length at most ``2 * limit``."""
    model = SlidingWindowModel(window, limit)
    admitted = [(t, c) for t, c in schedule(gaps) if model.decide(t, c)[0]]
    per_fixed: dict[int, int] = {}
    for t, c in admitted:
        per_fixed[t // window] = per_fixed.get(t // window, 0) + c
    assert all(total <= limit for total in per_fixed.values())
    for i, (start, _) in enumerate(admitted):
        inside = sum(c for t, c in admitted[i:] if t < start + window)
        assert inside <= 2 * limit


@given(
    windows,
    st.integers(min_value=6, max_value=40),
    st.integers(min_value=1, max_value=10),
    st.integers(0, 10**6),
)
def test_sliding_window_admits_traffic_at_half_the_limit(
    window: int, limit: int, periods: int, phase: int
) -> None:
    """The counter is approximate (it assumes the last window's calls were evenly spread), so traffic at
    the full rate may be refused; traffic spaced 2 * window / limit apart (half the rate) never is."""
    spacing = math.ceil(2 * window / limit)
    model = SlidingWindowModel(window, limit)
    start = 1_700_000_000_000_000 + phase
    assert all(model.decide(start + k * spacing)[0] == 1 for k in range(periods * limit))


@given(windows, limits, st.integers(0, 10**6))
def test_sliding_window_admits_a_full_quota_after_quiet(window: int, limit: int, phase: int) -> None:
    model = SlidingWindowModel(window, limit)
    start = 1_700_000_000_000_000 + phase
    assert [model.decide(start)[0] for _ in range(limit + 1)] == [1] * limit + [0]
    later = start + 2 * window
    assert [model.decide(later)[0] for _ in range(limit + 1)] == [1] * limit + [0]
