"""Every series, outcome and reason docs/metrics.md documents is produced by a real run (issue 10, item 6).

Through the users' doors: real ``sluice worker`` processes (the installed console script, ``--tasks
sweep_tasks``), tasks published with ``sluice publish`` (and two raw AMQP messages, as a producer in
another language would send them), ``sluice limits set``, and the real ``sluice metrics`` service's
``/metrics``. The documented lists are read from the doc itself (its two tables: the series, and the
outcomes with their reasons), so a documented name that no run produces fails here, and so does an
outcome or reason the code knows but the doc does not.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis
from fleet_helpers import HERE, SLUICE, Service, until

from sluice.protocol import H_ATTEMPT, H_CREATED_AT, H_DEAD_REASON, H_TASK, now_ms
from sluice.settings import Settings
from sluice.telemetry import OUTCOMES
from sluice.topology import Topology
from sluice_worker.outcome import MESSAGE_PROBLEMS, REASONS
from support.workers import WorkerProcess, stop_all

DOC = HERE.parents[1] / "docs" / "metrics.md"
COMPLETED = "sluice_tasks_completed_total"
MAX_BYTES = 2048  # the worker's SLUICE_MAX_MESSAGE_BYTES here, so a 4 KB task is too_large

# reason -> (the task whose series shows it, its outcome): each sweep task declares only the policy its
# scenario needs, so that outcome under that task name has this one cause (tests/metrics/sweep_tasks.py)
SCENARIOS = {
    "handler_error": ("sweep.fail", "failed"),
    "retry_budget_exhausted": ("sweep.budget", "failed"),
    "retry": ("sweep.flaky", "retried"),
    "not_json": ("sweep.json", "dead_lettered"),
    "too_large": ("sweep.big", "dead_lettered"),
    "bad_headers": ("sweep.hdr", "dead_lettered"),
    "unknown_task": ("_unknown", "dead_lettered"),
    "invalid_payload": ("sweep.model", "dead_lettered"),
    "duplicate": ("sweep.once", "deduplicated"),
    "rate_limited": ("sweep.rate", "deferred_limit"),
    "concurrency": ("sweep.pair", "deferred_limit"),
    "throttled": ("sweep.throttled", "deferred_limit"),
    "breaker_open": ("sweep.guarded", "deferred_breaker"),
    "eta": ("sweep.later", "deferred"),
    "in_progress": ("sweep.slowonce", "deferred"),
    "backend_unavailable": ("sweep.down", "deferred"),
    "cancelled": ("sweep.cancelled", "cancelled"),
}
# the reasons a dead letter's x-sluice-dead-reason header carries
DEAD_REASONS = {r for r, (_, outcome) in SCENARIOS.items() if outcome in ("failed", "dead_lettered")}


# ---- the doc
def _rows(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({series: its labels}, {outcome: its reasons}) as docs/metrics.md lists them."""
    text = DOC.read_text()
    series = {_names(r[0])[0]: _names(r[2]) for r in _rows(text, "| metric | type | labels |")}
    outcomes = {_names(r[0])[0]: _names(r[2]) for r in _rows(text, "| outcome | what became")}
    return series, outcomes


def test_the_doc_and_the_code_name_the_same_outcomes_and_reasons() -> None:
    series, outcomes = documented()
    assert len(series) >= 20 and COMPLETED in series
    assert sorted(outcomes) == sorted(OUTCOMES), "every outcome the code can count is documented, no other"
    reasons = {reason: outcome for outcome, rs in outcomes.items() for reason in rs}
    for problem in MESSAGE_PROBLEMS:
        assert reasons.get(problem) == "dead_lettered", problem
    for why, outcome in REASONS.items():  # the worker's outcome model
        assert reasons.get(why) == outcome, why
    assert sorted(reasons) == sorted(SCENARIOS), "each documented reason has a scenario below, no other"
    for reason, (_, outcome) in SCENARIOS.items():
        assert reasons[reason] == outcome, reason


# ---- the run
def _dead_port() -> int:
    with socket.socket() as s:  # a port nothing listens on: the second worker's "Redis"
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """Worker processes and CLI runs on the test's prefix, with sweep_tasks importable."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**env, "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])}
        self.logs = logs
        self.workers: list[WorkerProcess] = []

    def worker(self, *args: str, **extra: str) -> WorkerProcess:
        log = self.logs / f"worker{len(self.workers)}.log"
        w = WorkerProcess(["--tasks", "sweep_tasks", *args], {**self.env, **extra}, log)
        self.workers.append(w)
        return w

    def log(self, i: int) -> str:
        return self.workers[i].stderr()

    def sluice(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [SLUICE, *args], input=stdin, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"sluice {' '.join(args)}: {done.stderr}"
        return done.stdout

    def publish(self, *envelopes: dict[str, object]) -> list[str]:
        """``sluice publish --envelopes -``: one NDJSON line per task."""
        lines = "".join(json.dumps(e) + "\n" for e in envelopes)
        return self.sluice("publish", "sweep.ok", "-", "--envelopes", stdin=lines).split()

    def stop(self) -> list[int | None]:
        return stop_all(self.workers, timeout=20)


@pytest.fixture
def fleet(env: dict[str, str], topology: Settings, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(env, tmp_path)
    try:
        yield f
    finally:
        f.stop()
        r = redis.Redis.from_url(topology.redis_url)
        keys = list(r.scan_iter(f"{topology.prefix}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
        conn = pika.BlockingConnection(pika.URLParameters(topology.amqp_url))
        conn.channel().queue_delete(Topology.from_settings(topology).queue("sweepdown"))
        conn.close()


def completed(svc: Service) -> dict[tuple[str, str], float]:
    """(task, outcome) -> count, from /metrics."""
    return {
        (dict(labels)["task"], dict(labels)["outcome"]): v
        for (name, labels), v in svc.samples().items()
        if name == COMPLETED
    }


def test_a_skipped_duplicate_is_counted_as_deduplicated(service: Service, fleet: Fleet) -> None:
    """Two tasks with one idempotency key through a real worker: /metrics shows one success and
    ``outcome="deduplicated"`` 1 (the gate used to answer a plain ack: counted as a second success)."""
    fleet.worker("--queues", "default")
    until(lambda: service.summary()["workers_alive"] == 1, seconds=30)
    key = {"task": "sweep.once", "payload": {"n": 1}, "idempotency_key": "order-17"}
    fleet.publish(key)
    until(lambda: completed(service).get(("sweep.once", "success")) == 1, seconds=30)
    fleet.publish(key)
    got = until(lambda: (c := completed(service)).get(("sweep.once", "deduplicated")) == 1 and c, seconds=30)
    assert got[("sweep.once", "success")] == 1, got
    assert 'outcome="deduplicated",task="sweep.once"} 1.0' in service.metrics()
    assert fleet.stop() == [0]


def _raw(settings: Settings, body: bytes, headers: dict[str, object]) -> None:
    """A message as a producer in another language sends it (docs/protocol.md), straight to the exchange."""
    topo = Topology.from_settings(settings)
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            topo.tasks_exchange,
            settings.default_queue,
            body,
            pika.BasicProperties(headers=headers, delivery_mode=2, message_id=f"raw-{now_ms()}"),
            mandatory=True,
        )
    finally:
        conn.close()


@pytest.mark.timeout(300)  # two workers, a metrics service and a dozen scenarios (25-40 s on an idle box)
def test_every_documented_series_outcome_and_reason_appears_in_a_real_run(
    service: Service, fleet: Fleet, topology: Settings
) -> None:
    series, outcomes = documented()
    fleet.worker("--queues", "default", "--concurrency", "16", SLUICE_MAX_MESSAGE_BYTES=str(MAX_BYTES))
    fleet.worker("--queues", "sweepdown", SLUICE_REDIS_URL=f"redis://127.0.0.1:{_dead_port()}/0")
    until(lambda: service.summary()["workers_alive"] == 2, seconds=30)
    fleet.sluice("limits", "set", "sweep.ok", "1000/s")  # sluice_rate_limit_override_per_second

    def e(task: str, n: int = 0, **more: object) -> dict[str, object]:
        return {"task": task, "payload": {"n": n}, **more}

    fleet.publish(
        e("sweep.ok"),
        e("sweep.fail"),
        e("sweep.flaky"),
        e("sweep.budget"),
        e("sweep.once", idempotency_key="k1"),
        *[e("sweep.slowonce", idempotency_key="k2") for _ in range(2)],
        *[e("sweep.rate", i) for i in range(3)],
        *[e("sweep.pair", i) for i in range(3)],
        e("sweep.throttled"),
        e("sweep.adaptive"),
        *[e("sweep.guarded", i) for i in range(2)],
        e("sweep.later", delay="15s"),  # the 8 s tier, then 7 s still ahead: an eta hop however slow the box
        e("sweep.down", queue="sweepdown"),
        {"task": "sweep.model", "payload": {"n": "not a number"}},
        e("sweep.nosuch"),
        {"task": "sweep.big", "payload": {"n": 1, "pad": "x" * (2 * MAX_BYTES)}},
    )
    [doomed] = fleet.publish(e("sweep.cancelled", delay="4s"))  # cancelled while in its delay tier
    fleet.sluice("task", "cancel", doomed)
    created = {H_CREATED_AT: now_ms()}
    _raw(topology, b"not json", {H_TASK: "sweep.json", **created})
    _raw(topology, b"{}", {H_TASK: "sweep.hdr", H_ATTEMPT: "first", **created})

    # the second half: after the first duplicate ran and the breaker saw its two failures
    until(
        lambda: (
            (c := completed(service)).get(("sweep.once", "success"))
            and c.get(("sweep.guarded", "failed")) == 2
        ),
        seconds=60,
    )
    fleet.publish(e("sweep.once", idempotency_key="k1"), *[e("sweep.guarded", i) for i in range(2, 4)])

    def missing() -> list[str]:
        samples = service.samples()
        names = {name for name, _ in samples}
        out = [f"series {s}" for s in series if not names & {s, f"{s}_bucket", f"{s}_count", f"{s}_sum"}]
        for s, labels in series.items():  # each documented label is on the series' samples
            keys = {k for (name, ls), _ in samples.items() if name.startswith(s) for k, _ in ls}
            out += [f"label {label} of {s}" for label in labels if keys and label not in keys]
        done = completed(service)
        out += [f"outcome {o}" for o in outcomes if not any(v for (_, oc), v in done.items() if oc == o)]
        out += [f"reason {r} ({t}, {o})" for r, (t, o) in SCENARIOS.items() if not done.get((t, o))]
        return out

    try:
        until(lambda: not missing() or None, seconds=120, every=0.5)
    except AssertionError:
        raise AssertionError(
            f"never produced: {missing()}\n{fleet.log(0)[-3000:]}\n{fleet.log(1)[-2000:]}"
        ) from None

    samples = service.samples()
    assert samples[("sluice_breaker_state", (("breaker", "sweepbrk"),))] == 1  # open
    assert samples[("sluice_rate_limit_override_per_second", (("limit", "sweep.ok"),))] == 1000
    assert samples[("sluice_retry_budget_refusals_total", (("budget", "sweep.budget"),))] == 1
    # halved by the throttle, then back a tenth of 100/s each quiet 5 s: below the declared 100/s
    assert 0 < samples[("sluice_rate_limit_effective_rate", (("key", "sweep.adaptive"),))] < 100
    assert (
        samples[("sluice_rate_limit_decisions_total", (("decision", "allowed"), ("limit", "sweep.rate")))]
        == 1
    )
    assert (
        samples[("sluice_rate_limit_decisions_total", (("decision", "deferred"), ("limit", "sweep.rate")))]
        >= 2
    )

    # the dead letters carry each documented dead-letter reason
    conn = pika.BlockingConnection(pika.URLParameters(topology.amqp_url))
    try:
        ch = conn.channel()
        reasons = set()
        while (got := ch.basic_get(Topology.from_settings(topology).dead_queue, auto_ack=True))[
            0
        ] is not None:
            reasons.add(got[1].headers[H_DEAD_REASON])
    finally:
        conn.close()
    assert reasons == DEAD_REASONS

    assert fleet.stop() == [0, 0]
    for i in range(2):
        assert "Traceback" not in fleet.log(i), fleet.log(i)
