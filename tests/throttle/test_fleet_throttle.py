"""Three real ``sluice worker`` processes (the installed console script) call a fake upstream
(tests/support/fake_upstream.py: an exact sliding window of N per second per API key, 429 +
Retry-After beyond it) through tasks/``raise_for_throttle`` (throttle_tasks.py), limited at run time
with the installed ``sluice limits set``; 1,000 tasks a run (issue 14) against a 50/s upstream:

* ``"N/s sliding"`` at the upstream's own limit: every task runs, the upstream answers no 429 (the
  window is exact at admission on Redis' clock; the worker's margin covers a request that reaches the
  upstream up to 0.2 s after its admission, and a call that ends later than ``SETTLE_AFTER`` has its
  unit counted from its end, so a late request is covered too);
* a GCRA limit twice the upstream's, the 429s turned into ``Throttled``: every task succeeds, none in
  the DLQ, every run is attempt 1 (no attempt spent on a 429), and the 429s are bounded (printed);
* ``"4N/s adaptive"``: the throttles cut the fleet's effective rate (read through ``sluice limits ls
  --json`` while it runs) below the upstream's limit, and it keeps there; the curve (effective rate and
  429s a second) is printed (docs/benchmarks.md);
* each way an upstream writes "when" (seconds, HTTP-date, past, far, garbage, none, X-RateLimit-Reset):
  the workers go on; an absurd one is capped at an hour and shown by ``sluice limits ls --json``;
  ``sluice limits thaw`` ends it and the task runs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from sluice.resilience import KeySpace
from sluice.resilience.adaptive import adaptive_rates
from sluice.throttle import MAX_RETRY_AFTER
from support.fake_upstream import MODES, FakeUpstream, running_upstream
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import SLUICE, WorkerProcess, stop_all, worker_env

HERE = Path(__file__).resolve().parent
LIMIT = 50  # the upstream's: requests per second per API key
N = 1000  # tasks a run


class Fleet:
    """Worker processes on the test's prefix (throttle_tasks importable, the upstream's URL set), and
    the installed ``sluice`` for everything else."""

    def __init__(self, env: dict[str, str], amqp_url: str, prefix: str, logs: Path) -> None:
        self.env, self.amqp_url, self.prefix, self.logs = env, amqp_url, prefix, logs
        self.workers: list[WorkerProcess] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            log = self.logs / f"worker{len(self.workers)}.log"
            args = ["--tasks", "throttle_tasks", "--queues", "default", "--concurrency", "32"]
            self.workers.append(WorkerProcess(args, self.env, log))
        self.workers[-1].wait_consuming(self.amqp_url, f"{self.prefix}.q.default", len(self.workers))

    def sluice(
        self, *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [SLUICE, *args], input=stdin, env=self.env, capture_output=True, text=True, timeout=60
        )
        if ok:
            assert done.returncode == 0, f"sluice {' '.join(args)}: {done.stderr}"
        return done

    def publish(self, task: str, payloads: list[dict[str, object]]) -> None:
        self.sluice("publish", task, "-", stdin="".join(json.dumps(p) + "\n" for p in payloads))

    def limits(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = json.loads(self.sluice("limits", "ls", "--json").stdout)
        return rows

    def dead(self) -> int:
        state = queue_state(self.amqp_url, f"{self.prefix}.dlq")
        return 0 if state is None else state[0]

    def stop(self) -> list[int | None]:
        codes = stop_all(self.workers, timeout=20)
        for w in self.workers:
            assert "Traceback" not in w.stderr(), w.stderr()[-3000:]
        return codes


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with running_upstream(FakeUpstream(limit=LIMIT, period=1.0)) as served:
        yield served


@pytest.fixture
def fleet(
    amqp_url: str, redis_url: str, unique: str, tmp_path: Path, upstream: FakeUpstream, r: redis.Redis
) -> Iterator[Fleet]:
    env = worker_env(amqp_url, redis_url, unique, HERE, UPSTREAM_URL=upstream.url, SLUICE_GRACE_PERIOD="5")
    f = Fleet(env, amqp_url, unique, tmp_path)
    try:
        yield f
    finally:
        stop_all(f.workers, timeout=20)


def _records(r: redis.Redis, key: str) -> list[list[str]]:
    raw: list[bytes] = r.lrange(key, 0, -1)  # type: ignore[assignment]
    return [line.decode().split() for line in raw]


def runs(r: redis.Redis, key: str) -> list[tuple[int, int, int]]:
    """(n, attempt, upstream status) of every call the tasks made."""
    return [(int(n), int(attempt), int(status)) for n, attempt, status, _ in _records(r, key)]


def spent_on_429(got: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(n, attempt) of each run that came after a 429 of the same task at the attempt before: a 429 that
    spent an attempt. (A run at attempt 2 for another cause, e.g. the task's own record not reaching the
    shared Redis in time on a busy box, is not one; it is printed.)"""
    throttled = {(n, a) for n, a, status in got if status == 429}
    again = sorted({(n, a) for n, a, _ in got if a > 1})
    if again:
        print(f"runs at attempt > 1 (n, attempt): {again[:20]}")
    return [(n, a) for n, a in again if (n, a - 1) in throttled]


def answered_at(r: redis.Redis, key: str) -> list[tuple[float, int]]:
    """(wall time, upstream status) of every call the tasks made, in time order."""
    return sorted((float(t), int(status)) for _, _, status, t in _records(r, key))


def _ran(r: redis.Redis, key: str, n: int) -> bool:
    return {t[0] for t in runs(r, key) if t[2] == 200} == set(range(n))


def _calls(fleet: Fleet, rate: str, n: int) -> str:
    """``sluice limits set up.call RATE``, three workers, ``n`` calls published: their record's key."""
    fleet.sluice("limits", "set", "up.call", rate)
    fleet.start(3)
    record = f"{fleet.prefix}:runs"
    fleet.publish("up.call", [{"record": record, "n": i} for i in range(n)])
    return record


@pytest.mark.timeout(150)
def test_a_sliding_limit_at_the_upstreams_own_gets_no_429(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis
) -> None:
    start = time.monotonic()
    record = _calls(fleet, f"{LIMIT}/s sliding", N)
    wait_until(lambda: _ran(r, record, N), 100, f"{N} tasks run")
    got = runs(r, record)
    print(
        f"\nsliding {LIMIT}/s, 3 workers, {N} tasks in {time.monotonic() - start:.1f} s: {upstream.stats()}"
    )
    if upstream.total_refused:
        print_curve([], answered_at(r, record))
    assert upstream.total_refused == 0, upstream.stats()
    assert spent_on_429(got) == [], "no attempt spent on a 429"
    assert sum(1 for *_, status in got if status == 200) == N
    assert fleet.dead() == 0
    assert fleet.stop() == [0, 0, 0]


@pytest.mark.timeout(150)
def test_a_limit_twice_too_high_is_held_to_the_upstreams_by_its_throttles(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis
) -> None:
    start = time.monotonic()
    record = _calls(fleet, f"{2 * LIMIT}/s", N)
    seen_frozen: list[dict[str, object]] = []

    def done() -> bool:
        if not seen_frozen:  # while it runs: sluice limits ls shows the key frozen at some point
            seen_frozen.extend(
                row for row in fleet.limits() if row["key"] == "up.call" and row["frozen_until"] is not None
            )
        return _ran(r, record, N)

    wait_until(done, 110, f"{N} tasks run")
    got = runs(r, record)
    throttled = sum(1 for *_, status in got if status == 429)
    print(
        f"\ngcra {2 * LIMIT}/s against {LIMIT}/s, 3 workers, {N} tasks in {time.monotonic() - start:.1f} s: "
        f"{throttled} 429s, {upstream.stats()}"
    )
    print_curve([], answered_at(r, record))
    assert spent_on_429(got) == [], "no attempt spent on a 429"
    assert fleet.dead() == 0, "no task dead-lettered for a throttle"
    assert throttled == upstream.total_refused
    assert throttled <= N / 2, "bounded: each freeze lets at most the limit's burst through"
    assert seen_frozen and seen_frozen[0]["effective_rate"] == 0.0 and seen_frozen[0]["window"] == "gcra"
    assert seen_frozen[0]["adaptive"] is False and seen_frozen[0]["adaptive_rate"] is None
    assert fleet.stop() == [0, 0, 0]


def curve(
    samples: list[tuple[float, float]], answers: list[tuple[float, int]]
) -> list[tuple[int, float | None, int, int]]:
    """Per second from the first answer (wall time): (second, the lowest adaptive rate sampled in it,
    200s, 429s)."""
    start = min(t for t, _ in answers)
    end = max(t for t, _ in answers)
    out = []
    for sec in range(int(end - start) + 1):
        lo, hi = start + sec, start + sec + 1
        rates = [rate for t, rate in samples if lo <= t < hi]
        ok = sum(1 for t, status in answers if lo <= t < hi and status == 200)
        refused = sum(1 for t, status in answers if lo <= t < hi and status == 429)
        out.append((sec, min(rates) if rates else None, ok, refused))
    return out


def print_curve(samples: list[tuple[float, float]], answers: list[tuple[float, int]]) -> None:
    print("second  adaptive rate/s (lowest sampled)  200s  429s")
    for sec, rate, ok, refused in curve(samples, answers):
        print(f"{sec:6d}  {'' if rate is None else f'{rate:.1f}':>32}  {ok:4d}  {refused:4d}")


class RateSampler:
    """The adaptive rate of ``name`` read from Redis every ``every`` seconds in a thread (the curve's
    instrument: ``sluice limits ls`` is the user's door and is checked too, but a CLI run takes a second
    or more on a busy box)."""

    def __init__(self, redis_url: str, prefix: str, name: str, declared: float, every: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []
        self._args = (redis_url, prefix, name, declared, every)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        redis_url, prefix, name, declared, every = self._args
        client = AsyncRedis.from_url(redis_url)
        try:
            while not self._stop.is_set():
                found = {a.name: a.per_second for a in await adaptive_rates(client, keys=KeySpace(prefix))}
                self.samples.append((time.time(), found.get(name, declared)))
                await asyncio.sleep(every)
        finally:
            await client.aclose()

    def __enter__(self) -> RateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(150)
def test_an_adaptive_limit_four_times_too_high_converges_below_the_upstreams(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis, redis_url: str
) -> None:
    declared = 4 * LIMIT
    began = time.monotonic()
    shown: list[dict[str, object]] = []  # the up.call rows of sluice limits ls --json while it runs

    def done() -> bool:
        shown.extend(row for row in fleet.limits() if row["key"] == "up.call")
        return _ran(r, record, N)

    with RateSampler(redis_url, fleet.prefix, "up.call", declared) as sampler:
        record = _calls(fleet, f"{declared}/s adaptive", N)
        wait_until(done, 120, f"{N} tasks run", every=0.5)
    took = time.monotonic() - began
    got = runs(r, record)
    answers = answered_at(r, record)
    throttled = sum(1 for *_, status in got if status == 429)
    print(
        f"\nadaptive {declared}/s against {LIMIT}/s, 3 workers, {N} tasks in {took:.1f} s: {throttled} 429s"
    )
    print_curve(sampler.samples, answers)
    assert spent_on_429(got) == [], "no attempt spent on a 429"
    assert fleet.dead() == 0
    assert throttled == upstream.total_refused
    assert all(row["adaptive"] is True and row["rate"] == f"{declared}/s" for row in shown), shown
    cut = [float(row["adaptive_rate"]) for row in shown if float(row["adaptive_rate"]) < declared]  # type: ignore[arg-type]
    assert cut and min(cut) < LIMIT, "sluice limits ls shows the rate the throttles cut"
    first, last = answers[0][0], answers[-1][0]
    half = (first + last) / 2
    late = [rate for t, rate in sampler.samples if half <= t <= last]  # the run's second half
    assert late and statistics.median(late) < LIMIT, late
    early_429 = sum(1 for t, status in answers if status == 429 and t < half)
    late_429 = sum(1 for t, status in answers if status == 429 and t >= half)
    print(
        f"429s in the first half {early_429}, in the second {late_429}; median rate in the second half {statistics.median(late):.1f}/s"
    )
    assert late_429 < early_429 or late_429 <= 5, (early_429, late_429)
    assert fleet.stop() == [0, 0, 0]


@pytest.mark.timeout(120)
def test_every_way_of_saying_when_is_handled_and_a_far_one_is_capped_then_thawed(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis, unique: str
) -> None:
    upstream.limit, upstream.period = 1, 60.0  # one call per key per minute: the second is refused
    fleet.start(3)
    record = f"{unique}:runs"
    calls = [{"record": record, "n": i, "key": mode, "mode": mode} for i, mode in enumerate(MODES)]
    fleet.publish("up.keyed", calls)
    wait_until(lambda: _ran(r, record, len(MODES)), 30, "one call per key admitted")
    fleet.publish("up.keyed", [{**c, "n": 100 + i} for i, c in enumerate(calls)])
    wait_until(
        lambda: {t[0] for t in runs(r, record) if t[2] == 429} >= {100 + i for i in range(len(MODES))},
        30,
        "a 429 for every mode",
    )
    frozen = wait_until(
        lambda: (rows := {row["key"]: row for row in fleet.limits()}).get("up.keyed:far") and rows,
        15,
        "the far freeze listed",
    )
    far = frozen["up.keyed:far"]
    assert far["task"] == "up.keyed" and far["effective_rate"] == 0.0
    assert MAX_RETRY_AFTER - 60 <= float(far["frozen_for"]) <= MAX_RETRY_AFTER, "ten days capped at an hour"  # type: ignore[arg-type]
    for mode in ("seconds", "date", "reset-epoch", "reset-delta"):  # about a minute: the upstream's window
        assert 30 <= float(frozen[f"up.keyed:{mode}"]["frozen_for"]) <= 61, (mode, frozen)  # type: ignore[arg-type]
    assert "up.keyed:past" not in frozen, "a date in the past freezes nothing"

    upstream.reset()  # the upstream forgets: the thawed key's next call is admitted
    assert fleet.sluice("limits", "thaw", "up.keyed:far").stdout.strip() == "up.keyed:far: thawed"
    assert "up.keyed:far" not in {row["key"] for row in fleet.limits()}
    again = fleet.sluice("limits", "thaw", "up.keyed:far", ok=False)
    assert again.returncode == 1 and again.stderr.startswith("sluice: error:")
    far_n = 100 + MODES.index("far")
    wait_until(lambda: (far_n, 1, 200) in runs(r, record), 30, "the thawed task run")
    assert spent_on_429(runs(r, record)) == [], "no attempt spent on any 429"
    assert fleet.dead() == 0
    assert fleet.stop() == [0, 0, 0]
