"""The Prometheus collector of the fleet: task counters and histograms merged from the processes'
snapshots, processes alive, oldest message age, DLQ size, rate limits, breakers, retry budgets and the
task handles (the workers' events, the producers' waiters, the cancels and unique duplicates counted in Redis).

Every family is rendered at scrape time from :class:`~sluice_metrics.fleet.Fleet` (no state here).
Labels are bounded: task names (capped per process), outcomes (a fixed set), queue, limit, breaker and
budget names (capped per process and in the Redis read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sluice.errors import ConfigError
from sluice.handles.client import CANCEL_RULES, CANCELS, UNIQUE_DUPLICATES
from sluice.policy import parse_rate
from sluice.resilience import BreakerState
from sluice.telemetry import HANDLE_EVENTS, OUTCOMES, PAUSE_REASONS, RUN_BUCKETS, WAIT_BUCKETS
from sluice_metrics.fleet import Fleet
from sluice_metrics.processes import Hist

__all__ = ["METRIC_NAMES", "FleetCollector", "rate_per_second"]

# every family this service exports (QueueCollector's included), for docs, dashboards and tests
METRIC_NAMES = (
    "sluice_up",
    "sluice_broker_up",
    "sluice_redis_up",
    "sluice_queue_messages",
    "sluice_queue_consumers",
    "sluice_queue_present",
    "sluice_queue_oldest_age_seconds",
    "sluice_dlq_messages",
    "sluice_metrics_scrape_errors_total",
    "sluice_metrics_scrape_duration_seconds",
    "sluice_metrics_snapshots_total",
    "sluice_tasks_published_total",
    "sluice_tasks_completed_total",
    "sluice_task_run_seconds",
    "sluice_task_queue_wait_seconds",
    "sluice_tasks_in_progress",
    "sluice_workers_alive",
    "sluice_processes_alive",
    "sluice_rate_limit_decisions_total",
    "sluice_rate_limit_wait_seconds",
    "sluice_rate_limit_override_per_second",
    "sluice_breaker_state",
    "sluice_retry_budget_refusals_total",
    "sluice_upstream_throttles_total",
    "sluice_rate_limit_frozen_seconds",
    "sluice_rate_limit_effective_rate",
    "sluice_consumers_paused",
    "sluice_consumer_pauses_total",
    "sluice_task_handle_events_total",
    "sluice_task_cancels_recorded_total",
    "sluice_unique_duplicates_total",
    "sluice_task_waiters",
)


def rate_per_second(text: str) -> float | None:
    """``"50/s"`` -> 50.0, ``"6000/min"`` -> 100.0 (:func:`sluice.policy.parse_rate`); None if not understood."""
    try:
        rate = parse_rate(text)
    except (ConfigError, ValueError):
        return None
    return rate.rate.units_per_second


def _buckets(bounds: tuple[float, ...], h: Hist) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for i, n in enumerate(h.counts):
        running += n
        out.append((repr(float(bounds[i])) if i < len(bounds) else "+Inf", running))
    return out


def _counter(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily:
    """A counter family with one sample per (label values, count)."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in counts:
        family.add_metric(list(values), n)
    return family


def _histogram(
    name: str,
    doc: str,
    label: str,
    hists: Mapping[str, Hist],
    bounds: tuple[float, ...],
    label_of: Callable[[str], str] = str,
) -> HistogramMetricFamily:
    """A histogram family with one sample per key of ``hists`` (in key order), labelled ``label_of(key)``."""
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, h in sorted(hists.items()):
        family.add_metric([label_of(key)], _buckets(bounds, h), h.sum)
    return family


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on what is known at scrape time

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet
        now = fleet.clock()
        table = fleet.table
        totals = table.totals()
        name = fleet.rabbit_name

        yield _counter(
            "sluice_tasks_published",
            "tasks producers published (confirmed), by queue",
            ["queue"],
            (((name(q),), n) for q, n in sorted(totals.published.items())),
        )
        yield _counter(
            "sluice_tasks_completed",
            f"deliveries workers carried out, by task and outcome ({', '.join(OUTCOMES)})",
            ["task", "outcome"],
            sorted(totals.done.items()),
        )
        yield _histogram(
            "sluice_task_run_seconds", "seconds a task's handler ran", "task", totals.run, RUN_BUCKETS
        )
        yield _histogram(
            "sluice_task_queue_wait_seconds",
            "seconds from a task's creation to its start, by queue",
            "queue",
            totals.wait,
            WAIT_BUCKETS,
            name,
        )

        yield GaugeMetricFamily(
            "sluice_tasks_in_progress",
            "tasks running now in live workers",
            value=table.gauge_sum("in_progress", now),
        )
        yield GaugeMetricFamily(
            "sluice_workers_alive",
            f"workers that sent a snapshot in the last {table.alive_after:g} s",
            value=len(table.alive(now, "worker")),
        )
        alive = GaugeMetricFamily(
            "sluice_processes_alive", "processes alive by heartbeat, by kind", labels=["kind"]
        )
        kinds: dict[str, int] = {"worker": 0, "producer": 0}
        for p in table.alive(now):
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        for kind, n in sorted(kinds.items()):
            alive.add_metric([kind], n)
        yield alive
        yield _counter(
            "sluice_metrics_snapshots",
            "telemetry snapshots received, by result",
            ["result"],
            [
                (("accepted",), table.accepted),
                (("stale",), table.stale),
                (("invalid",), table.invalid),
                (("reset",), table.resets),
            ],
        )

        age = GaugeMetricFamily(
            "sluice_queue_oldest_age_seconds",
            "upper bound on the age of the oldest message in the queue (docs/metrics.md)",
            labels=["queue"],
        )
        for q, a in sorted(fleet.ages.items()):
            if a is not None:
                age.add_metric([q], a)
        yield age
        snap = fleet.queues
        if snap is not None and snap.broker_up:
            for stats in snap.queues:
                if stats.queue == fleet.topology.dead_queue and stats.present:
                    yield GaugeMetricFamily(
                        "sluice_dlq_messages", "messages in the dead-letter queue", value=stats.messages
                    )

        yield _counter(
            "sluice_rate_limit_decisions",
            "rate-limit decisions, by limit and decision",
            ["limit", "decision"],
            sorted(totals.limits.items()),
        )
        yield _histogram(
            "sluice_rate_limit_wait_seconds",
            "seconds a rate limit made a task wait",
            "limit",
            totals.limit_wait,
            WAIT_BUCKETS,
        )
        yield _counter(
            "sluice_upstream_throttles",
            "throttles an upstream answered (sluice.Throttled), by the rate-limit key or scope they froze",
            ["scope"],
            (((k,), n) for k, n in sorted(totals.throttles.items())),
        )
        paused = GaugeMetricFamily(
            "sluice_consumers_paused",
            "worker consumers paused now because every task of the queue is blocked, by queue",
            labels=["queue"],
        )
        pausing = table.gauge_sums("consumers_paused:", now)
        for q, count in sorted(pausing.items()):
            paused.add_metric([name(q)], count)
        yield paused
        pauses = dict.fromkeys(((q, r) for q in pausing for r in PAUSE_REASONS), 0)  # 0 before the first
        yield _counter(
            "sluice_consumer_pauses",
            f"pauses of a queue's consumer, by queue and the block that caused it ({', '.join(PAUSE_REASONS)})",
            ["queue", "reason"],
            (((name(q), r), n) for (q, r), n in sorted((pauses | totals.pauses).items())),
        )
        yield _counter(
            "sluice_retry_budget_refusals",
            "retries a retry budget refused, by budget",
            ["budget"],
            (((b,), n) for b, n in sorted(totals.budget_refused.items())),
        )
        yield _counter(
            "sluice_task_handle_events",
            f"task handles: tracked tasks ended, results stored or refused, state writes lost ({', '.join(HANDLE_EVENTS)})",
            ["event"],
            (((e,), n) for e, n in sorted(totals.handles.items())),
        )
        yield GaugeMetricFamily(
            "sluice_task_waiters",
            "waits on a task's end open now in live producers (GET /v1/tasks/{id}?wait=S)",
            value=table.gauge_sum("task_waiters", now),
        )

        redis = fleet.redis
        yield GaugeMetricFamily(
            "sluice_redis_up",
            "1 if the last read of breaker and limit state reached Redis",
            value=0 if redis is None or not redis.redis_up else 1,
        )
        overrides = GaugeMetricFamily(
            "sluice_rate_limit_override_per_second",
            "run-time rate limit set with `sluice limits set`, in tasks per second",
            labels=["limit"],
        )
        breakers = GaugeMetricFamily(
            "sluice_breaker_state", "circuit breaker state: 0 closed, 1 open, 2 half-open", labels=["breaker"]
        )
        frozen = GaugeMetricFamily(
            "sluice_rate_limit_frozen_seconds",
            "seconds left of each freeze an upstream's throttle set (sluice limits ls), by key or scope",
            labels=["key"],
        )
        effective = GaugeMetricFamily(
            "sluice_rate_limit_effective_rate",
            "the fleet's effective rate of each adaptive limit a throttle cut below its declared rate, in units per second",
            labels=["key"],
        )
        if redis is not None:
            for key, left in sorted(redis.frozen.items()):
                frozen.add_metric([key], left)
            for key, (rate, _) in sorted(redis.adaptive.items()):
                effective.add_metric([key], rate)
            for limit, doc in redis.limits.items():
                per_s = rate_per_second(str(doc.get("rate", "")))
                if per_s is not None:
                    overrides.add_metric([limit], per_s)
            for b, state in redis.breakers.items():
                breakers.add_metric([b], BreakerState[state.upper()].value)
        cancels = CounterMetricFamily(
            "sluice_task_cancels_recorded",
            "cancels recorded fleet-wide, by scope: id (a task id), batch (a rule by task name and publish time)",
            labels=["scope"],
        )
        duplicates = CounterMetricFamily(
            "sluice_unique_duplicates",
            "publishes refused fleet-wide as duplicates of the task holding their unique key",
        )
        if redis is not None and redis.redis_up:
            counts = redis.handle_counts
            cancels.add_metric(["id"], counts.get(CANCELS, 0))
            cancels.add_metric(["batch"], counts.get(CANCEL_RULES, 0))
            duplicates.add_metric([], counts.get(UNIQUE_DUPLICATES, 0))
        yield from (overrides, frozen, effective, breakers, cancels, duplicates)
