"""In-process telemetry and the per-process merge: pure data, no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluice.settings import Settings
from sluice.telemetry import (
    OTHER,
    OUTCOMES,
    RUN_BUCKETS,
    NullTelemetry,
    Telemetry,
    telemetry_for,
)
from sluice_metrics.fleet import percentile
from sluice_metrics.processes import ProcessTable


def test_counts_histograms_and_snapshot_shape() -> None:
    t = Telemetry("worker")
    t.gauge("in_progress", lambda: 7)
    for _ in range(3):
        t.task_done("a", "success", queue="default", run_seconds=0.003, wait_seconds=0.2)
    t.task_done("a", "failed", queue="default", run_seconds=100.0)
    t.task_done("b", "retried")
    t.published("default", 5)
    t.limit_decision("a", False, 0.5)
    t.budget_refused("a")
    doc = json.loads(json.dumps(t.snapshot()))  # JSON round trip, as on the wire
    assert sorted(map(tuple, doc["done"])) == [("a", "failed", 1), ("a", "success", 3), ("b", "retried", 1)]
    run = doc["run"]["a"]
    assert run["count"] == 4 and run["sum"] == pytest.approx(100.009)
    assert run["counts"][RUN_BUCKETS.index(0.005)] == 3  # 3 ms falls in le=0.005
    assert run["counts"][-1] == 1  # 100 s is above every bound: +Inf
    assert doc["wait"]["default"]["count"] == 3 and doc["last_wait"]["default"][1] == 0.2
    assert doc["published"] == {"default": 5}
    assert doc["limits"] == [["a", "deferred", 1]] and doc["budget_refused"] == {"a": 1}
    assert doc["gauges"] == {"in_progress": 7.0}
    assert doc["seq"] == 1 and t.snapshot()["seq"] == 2


def test_unknown_outcome_is_refused_and_task_labels_are_capped() -> None:
    t = Telemetry("worker", max_tasks=2)
    with pytest.raises(ValueError, match="unknown outcome 'exploded'"):
        t.task_done("a", "exploded")
    for name in ("a", "b", "c", "d"):
        t.task_done(name, "success", run_seconds=0.01)
    done = {(task, o): n for task, o, n in t.snapshot()["done"]}
    assert done == {("a", "success"): 1, ("b", "success"): 1, (OTHER, "success"): 2}
    assert set(t.snapshot()["run"]) == {"a", "b", OTHER}


def test_metrics_off_gives_a_no_op() -> None:
    off = telemetry_for(Settings(metrics_enabled=False), "worker")
    assert isinstance(off, NullTelemetry) and not off.enabled
    off.task_done("a", "not even an outcome")  # does nothing, checks nothing
    assert isinstance(telemetry_for(Settings(), "worker"), Telemetry)


def snap(instance: str, seq: int, done: dict[str, int], *, final: bool = False) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "worker",
        "instance": instance,
        "host": "h",
        "pid": 1,
        "started": 0.0,
        "seq": seq,
        "final": final,
        "done": [["t", o, n] for o, n in done.items()],
        "gauges": {"in_progress": 1},
    }


def success(table: ProcessTable) -> int:
    return table.totals().done.get(("t", "success"), 0)


def test_merge_restart_reset_stale_final_and_expiry() -> None:
    table = ProcessTable(alive_after=5)
    assert table.ingest(snap("A", 1, {"success": 10}), now=0)
    assert table.ingest(snap("B", 1, {"success": 5}), now=0)
    assert success(table) == 15
    assert not table.ingest(snap("A", 1, {"success": 999}), now=1)  # duplicate seq
    assert table.stale == 1 and success(table) == 15
    assert table.ingest(snap("A", 2, {"success": 12}), now=1)  # cumulative: 12 replaces 10
    assert success(table) == 17
    assert table.ingest(snap("A", 3, {"success": 2}), now=2)  # went down: a reset, the 12 are kept
    assert table.resets == 1 and success(table) == 12 + 2 + 5
    # B restarts as a new instance: its old counts stay, the new ones add
    assert table.ingest(snap("B2", 1, {"success": 1}), now=2)
    assert success(table) == 12 + 2 + 5 + 1
    assert [p.instance for p in table.alive(now=3)] == ["A", "B", "B2"]
    assert [p.instance for p in table.alive(now=5.5)] == ["A", "B2"]  # B silent for 5.5 s
    table.expire(now=100)  # everyone silent: retired, totals unchanged
    assert table.processes == {} and success(table) == 20
    assert table.ingest(snap("A", 4, {"success": 4}), now=101)  # A was only silent: counted once
    assert success(table) == 22
    table.expire(now=200)
    assert table.ingest(snap("C", 1, {"success": 3}, final=True), now=201)  # a clean stop
    assert table.processes == {} and success(table) == 25 and table.gone[-1].stopped == "stopped"
    assert not table.ingest({"v": 2}, now=201) and not table.ingest("junk", now=201)
    assert table.invalid == 2


@settings(max_examples=60, deadline=None)
# found by hypothesis: B goes silent (retired), then a repeat of its last snapshot arrives; it was
# refused as stale only after B's counts had been taken out of the retired totals (the total fell)
@example(
    events=[
        ("A", 0, 0, False, 0),
        ("B", 1, 0, False, 0),
        ("A", 0, 0, False, 1),
        ("A", 0, 0, False, 3),
        ("A", 0, 0, False, 3),
        ("B", 0, 0, False, 0),
    ]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("ABC"),
            st.integers(0, 20),
            st.integers(0, 5),
            st.booleans(),
            st.integers(0, 3),
        ),
        max_size=40,
    )
)
def test_fleet_totals_never_go_down(events: list[tuple[str, int, int, bool, int]]) -> None:
    """Whatever order, loss, restart or reset: the merged counter never decreases."""
    table = ProcessTable(alive_after=2)
    seqs: dict[str, int] = {}
    now, last = 0.0, 0
    for who, count, seq_step, final, wait in events:
        now += wait
        seqs[who] = seqs.get(who, 0) + seq_step
        table.ingest(snap(who, seqs[who], {"success": count}, final=final), now)
        table.expire(now)
        total = success(table)
        assert total >= last
        last = total


def test_percentile_interpolates_inside_buckets() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert percentile(bounds, [0, 0, 0, 0], 0.5) is None
    assert percentile(bounds, [10, 0, 0, 0], 0.5) == pytest.approx(0.5)
    assert percentile(bounds, [0, 10, 10, 0], 0.5) == pytest.approx(2.0)
    assert percentile(bounds, [0, 10, 10, 0], 0.75) == pytest.approx(3.0)
    assert percentile(bounds, [0, 0, 0, 5], 0.99) == 4.0  # +Inf bucket: the top bound
    assert len(OUTCOMES) == len(set(OUTCOMES))


def test_worker_outcomes_are_named_and_labels_bounded() -> None:
    from sluice_worker.outcome import ACK, DEDUPLICATED, DeadLettered, Deferred, Retry
    from sluice_worker.recording import DeliveryRecorder

    def Dead(reason: str) -> DeadLettered:
        return DeadLettered(reason, "")

    assert ACK.metric == "success"
    assert Dead("handler_error").metric == "failed"
    assert Dead("unknown_task").metric == "dead_lettered"
    assert Retry(1.0, 2, 0).metric == "retried"
    assert Deferred("rate_limited", 1.0).metric == "deferred_limit"
    assert Deferred("breaker_open", 1.0).metric == "deferred_breaker"
    assert Deferred("eta", 1.0).metric == "deferred"
    assert DEDUPLICATED.metric == "deduplicated"
    assert {o.metric for o in (Dead("x"), Deferred("y", 1.0), DEDUPLICATED)} <= set(OUTCOMES)

    t = Telemetry("worker")
    rec = DeliveryRecorder(t, ["demo.echo"])
    started = rec.begin()
    assert rec.running == 1 and t.snapshot()["gauges"]["in_progress"] == 1
    rec.end("default", {"x-sluice-task": "demo.echo", "x-sluice-created-at": 0}, ACK, started)
    rec.end("default", {"x-sluice-task": "made.up.by.a.message"}, Dead("unknown_task"), rec.begin())
    rec.end("default", None, None, rec.begin())  # cancelled: no outcome, nothing counted
    doc = t.snapshot()
    assert rec.running == 0 and doc["gauges"]["in_progress"] == 0
    assert sorted(map(tuple, doc["done"])) == [("_unknown", "dead_lettered", 1), ("demo.echo", "success", 1)]
    assert doc["wait"]["default"]["count"] == 1 and doc["wait"]["default"]["counts"][-1] == 1  # created 1970
    assert set(doc["run"]) == {"demo.echo"}  # a dead-lettered message never ran
