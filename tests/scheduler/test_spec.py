"""Declaring schedules (one-line ConfigError for every bad part) and their timing: DST, catch-up, jitter.

Pure: no broker, no clock but the numbers given (the plan takes "now" as an argument).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from sluice.errors import ConfigError, SluiceError
from sluice.schedules import (
    CatchUp,
    Schedule,
    Schedules,
    cron,
    every,
    fire_message,
    jitter_ms,
    next_after,
    plan,
)
from sluice.schedules.timing import between, tail

PARIS = ZoneInfo("Europe/Paris")
NY = ZoneInfo("America/New_York")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local(s: Schedule, occurrence: int) -> str:
    return datetime.fromtimestamp(occurrence / 1000, UTC).astimezone(s.zone).isoformat()


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: cron("0 6 * *"), "bad cron expression '0 6 * *'"),
        (lambda: cron("61 * * * *"), "bad cron expression '61 * * * *'"),
        (lambda: cron("0 6 * * *", tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda: every("5 parsecs"), "bad duration '5 parsecs'"),
        (lambda: every("0s"), "bad interval"),
        (lambda: every("5m", catch_up="sometimes"), "bad catch-up 'sometimes'"),
        (lambda: every("5m", name="a:b"), "bad schedule name 'a:b'"),
        (lambda: every("5m", max_catch_up=0), "bad max_catch_up 0"),
        (lambda: every("5m", payload={"x": {1, 2}}), "payload is not JSON-serialisable"),
        (lambda: Schedule(name="x", task="t"), "exactly one of cron and interval"),
    ],
)
def test_a_bad_declaration_is_one_config_error(build: object, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    assert says in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, SluiceError)


def test_every_and_cron_build_checked_frozen_schedules() -> None:
    s = every("5m", task="sync.accounts")
    assert s.interval == 300 and s.catch_up is CatchUp.LATEST and s.spec == "every 5m"
    c = cron("0 6 * * *", tz="Europe/Paris", payload={"report": "daily"}, catch_up="all").bound(
        "reports.daily"
    )
    assert (c.name, c.task, c.catch_up) == ("reports.daily", "reports.daily", CatchUp.ALL)
    assert Schedule.from_dict(c.as_dict()) == c
    with pytest.raises(AttributeError):
        c.tz = "UTC"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown schedule field"):
        Schedule.from_dict({**c.as_dict(), "colour": "red"})


def test_a_registry_needs_tasks_and_refuses_two_schedules_of_one_name() -> None:
    reg = Schedules([every("1m", task="a.b")])
    assert list(reg) == ["a.b"]
    with pytest.raises(ConfigError, match="must name its task"):
        reg.add(every("1m"))
    with pytest.raises(ConfigError, match="two different schedules"):
        reg.add(every("2m", task="a.b"))


def test_interval_occurrences_are_aligned_on_the_epoch() -> None:
    s = every("5m", name="x", task="t")
    start = ms(datetime(2026, 1, 1, 10, 2, 13, tzinfo=UTC))
    assert local(s, next_after(s, start)) == "2026-01-01T10:05:00+00:00"
    assert next_after(s, ms(datetime(2026, 1, 1, 10, 5, tzinfo=UTC))) == ms(
        datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    )


def test_spring_forward_a_0230_job_runs_once_right_after_the_jump() -> None:
    # Europe/Paris, 2026-03-29: 02:00 -> 03:00; 02:30 does not exist that day
    s = cron("30 2 * * *", tz="Europe/Paris", name="x", task="t")
    day_before = ms(datetime(2026, 3, 28, 12, 0, tzinfo=PARIS))
    got = [local(s, o) for o in between(s, day_before, day_before + 3 * 86_400_000, 10)]
    assert got == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]


def test_fall_back_a_0130_job_runs_once_at_the_first_0130() -> None:
    # America/New_York, 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice that night
    s = cron("30 1 * * *", tz="America/New_York", name="x", task="t")
    day_before = ms(datetime(2026, 10, 31, 12, 0, tzinfo=NY))
    occurrences = between(s, day_before, day_before + 3 * 86_400_000, 10)
    assert [local(s, o) for o in occurrences] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]
    # from a cursor anywhere in the repeated hour (the first 01:45, the second 01:10): the next day
    first = occurrences[0]
    for cursor in (first, first + 15 * 60_000, first + 40 * 60_000):
        assert next_after(s, cursor) == occurrences[1]


def test_fall_back_walked_by_the_plan_minute_by_minute_fires_once() -> None:
    """The scheduler's view: the plan asked every minute through the night, cursor moved by each fire."""
    s = cron("30 1 * * *", tz="America/New_York", name="x", task="t")
    start = ms(datetime(2026, 11, 1, 0, 0, tzinfo=NY))
    cursor, fired = start, []
    for minute in range(0, 5 * 60):
        now = start + minute * 60_000
        p = plan(s, cursor, now, term_start_ms=start)
        for occ, _ in p.fire:
            fired.append(occ)
            cursor = occ
    assert [local(s, o) for o in fired] == ["2026-11-01T01:30:00-04:00"]


def test_spring_forward_walked_by_the_plan_fires_once() -> None:
    s = cron("30 2 * * *", tz="Europe/Paris", name="x", task="t")
    start = ms(datetime(2026, 3, 29, 0, 0, tzinfo=PARIS))
    cursor, fired = start, []
    for minute in range(0, 5 * 60):
        p = plan(s, cursor, start + minute * 60_000, term_start_ms=start)
        for occ, _ in p.fire:
            fired.append(occ)
            cursor = occ
    assert [local(s, o) for o in fired] == ["2026-03-29T03:00:00+02:00"]


@pytest.mark.parametrize(
    ("policy", "fired", "skipped"),
    [
        ("skip", [], 10),
        ("latest", [10], 9),
        ("all", list(range(1, 11)), 0),
    ],
)
def test_catch_up_of_ten_missed_occurrences(policy: str, fired: list[int], skipped: int) -> None:
    """No scheduler from 0 s to 10.5 s (occurrences 1..10 s missed); one starts at 10.5 s."""
    s = every("1s", name="x", task="t", catch_up=policy)
    p = plan(s, cursor_ms=0, now_ms=10_500, term_start_ms=10_500 + 2000)
    assert [o // 1000 for o, _ in p.fire] == fired
    assert all(caught for _, caught in p.fire)
    assert p.skipped == skipped
    assert p.skip_to == (10_000 if policy == "skip" else None)
    assert p.next_due == 11_000


def test_all_is_bounded_by_max_catch_up_keeping_the_latest() -> None:
    s = every("1s", name="x", task="t", catch_up="all", max_catch_up=3)
    p = plan(s, 0, 100_500, 200_000)
    assert [o for o, _ in p.fire] == [98_000, 99_000, 100_000]
    assert p.skipped == 97


def test_occurrences_due_during_the_term_are_all_fired_whatever_the_policy() -> None:
    """A leader that could not publish for 5 s (a broker outage) fires each occurrence it holds back."""
    s = every("1s", name="x", task="t", catch_up="skip")
    p = plan(s, cursor_ms=10_000, now_ms=15_200, term_start_ms=1_000)
    assert [(o, caught) for o, caught in p.fire] == [(o, False) for o in range(11_000, 15_001, 1000)]


def test_cron_latest_after_a_long_gap_is_found_without_walking_every_occurrence() -> None:
    s = cron("* * * * * *", name="x", task="t")  # every second
    day = 86_400_000
    assert tail(s, 0, 30 * day, 2) == [30 * day - 1000, 30 * day]


def test_jitter_is_deterministic_and_below_the_bound() -> None:
    s = every("1m", name="x", task="t", jitter="10s")
    offsets = {jitter_ms(s, o) for o in range(0, 6_000_000, 60_000)}
    assert all(0 <= j < 10_000 for j in offsets) and len(offsets) > 50
    assert jitter_ms(s, 60_000) == jitter_ms(every("1m", name="x", task="t", jitter="10s"), 60_000)
    j = jitter_ms(s, 60_000)
    assert plan(s, 0, 60_000 + j - 1, 0).fire == ()
    assert plan(s, 0, 60_000 + j, 0).fire == ((60_000, False),)


def test_a_fire_has_the_deterministic_id_and_the_schedule_headers() -> None:
    s = every("1m", name="nightly", task="reports.render", payload={"a": 1})
    msg = fire_message(s, 120_000, "reports", now_ms=120_050)
    assert msg.id == "nightly:120000" and msg.idempotency_key == "nightly:120000"
    h = msg.headers()
    assert h["x-sluice-schedule"] == "nightly" and h["x-sluice-occurrence"] == 120_000
    assert h["x-sluice-task"] == "reports.render" and h["x-sluice-queue"] == "reports"


def test_schedules_declared_on_a_task_are_bound_and_named_after_it() -> None:
    from sluice.schedules import bind_to_task

    one, two, named = bind_to_task(
        "sync:accounts", [every("5m"), cron("0 6 * * *", tz="Europe/Paris"), every("1h", name="hourly")]
    )
    assert (one.name, two.name, named.name) == ("sync.accounts", "sync.accounts-2", "hourly")
    assert {one.task, two.task, named.task} == {"sync:accounts"}
    (single,) = bind_to_task("a.b", every("1m"))
    assert single.name == "a.b"
    with pytest.raises(ConfigError, match="schedule= takes every"):
        bind_to_task("a.b", ["5m"])  # type: ignore[list-item]
