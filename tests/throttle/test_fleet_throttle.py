"""Three real ``sluice worker`` processes (the installed console script) call a fake upstream
(tests/support/fake_upstream.py: an exact sliding window of N per second per API key, 429 +
Retry-After beyond it) through tasks/``raise_for_throttle`` (throttle_tasks.py), limited at run time
with the installed ``sluice limits set``:

* ``"N/s sliding"`` at the upstream's own limit: every task runs, the upstream answers no 429;
* a GCRA limit twice the upstream's, the 429s turned into ``Throttled``: every task succeeds, none in
  the DLQ, every run is attempt 1 (no attempt spent on a 429), and the 429s are bounded (printed);
* each way an upstream writes "when" (seconds, HTTP-date, past, far, garbage, none, X-RateLimit-Reset):
  the workers go on; an absurd one is capped at an hour and shown by ``sluice limits ls --json``;
  ``sluice limits thaw`` ends it and the task runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sluice.throttle import MAX_RETRY_AFTER
from support.fake_upstream import MODES, FakeUpstream, running_upstream
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import SLUICE, WorkerProcess, stop_all, worker_env

HERE = Path(__file__).resolve().parent
LIMIT = 20  # the upstream's: requests per second per API key


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


def runs(r: redis.Redis, key: str) -> list[tuple[int, int, int]]:
    """(n, attempt, upstream status) of every call the tasks made."""
    return [tuple(map(int, raw.decode().split())) for raw in r.lrange(key, 0, -1)]  # type: ignore[misc]


def _ran(r: redis.Redis, key: str, n: int) -> bool:
    return {t[0] for t in runs(r, key) if t[2] == 200} == set(range(n))


def _calls(fleet: Fleet, rate: str, n: int) -> str:
    """``sluice limits set up.call RATE``, three workers, ``n`` calls published: their record's key."""
    fleet.sluice("limits", "set", "up.call", rate)
    fleet.start(3)
    record = f"{fleet.prefix}:runs"
    fleet.publish("up.call", [{"record": record, "n": i} for i in range(n)])
    return record


@pytest.mark.timeout(120)
def test_a_sliding_limit_at_the_upstreams_own_gets_no_429(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis
) -> None:
    n = 200
    record = _calls(fleet, f"{LIMIT}/s sliding", n)
    wait_until(lambda: _ran(r, record, n), 60, f"{n} tasks run")
    got = runs(r, record)
    print(
        f"\nsliding {LIMIT}/s, 3 workers, {n} tasks: {upstream.stats()}, most in 1 s {upstream.most_in_a_window('k1')}"
    )
    assert upstream.total_refused == 0, upstream.stats()
    assert len(got) == n and {a for _, a, _ in got} == {1}
    assert upstream.most_in_a_window("k1") <= LIMIT
    assert fleet.dead() == 0
    assert fleet.stop() == [0, 0, 0]


@pytest.mark.timeout(120)
def test_a_limit_twice_too_high_is_held_to_the_upstreams_by_its_throttles(
    fleet: Fleet, upstream: FakeUpstream, r: redis.Redis
) -> None:
    n = 200
    record = _calls(fleet, f"{2 * LIMIT}/s", n)
    seen_frozen: list[dict[str, object]] = []

    def done() -> bool:
        if not seen_frozen:  # while it runs: sluice limits ls shows the key frozen at some point
            seen_frozen.extend(
                row for row in fleet.limits() if row["key"] == "up.call" and row["frozen_until"] is not None
            )
        return _ran(r, record, n)

    wait_until(done, 90, f"{n} tasks run")
    got = runs(r, record)
    throttled = sum(1 for *_, status in got if status == 429)
    print(
        f"\ngcra {2 * LIMIT}/s against {LIMIT}/s, 3 workers, {n} tasks: {throttled} 429s, {upstream.stats()}"
    )
    assert {a for _, a, _ in got} == {1}, "no attempt spent on a 429"
    assert fleet.dead() == 0, "no task dead-lettered for a throttle"
    assert throttled == upstream.total_refused
    assert throttled <= n, "bounded: each freeze lets at most the limit's burst through"
    assert seen_frozen and seen_frozen[0]["effective_rate"] == 0.0 and seen_frozen[0]["window"] == "gcra"
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
    assert {a for _, a, _ in runs(r, record)} == {1}, "no attempt spent on any 429"
    assert fleet.dead() == 0
    assert fleet.stop() == [0, 0, 0]
