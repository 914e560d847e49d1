"""The fleet as the metrics service sees it: processes, queues, Redis state, a short history.

:meth:`Fleet.tick` runs once a second (``sample_loop``): it expires silent processes, reads the queues and
(every other second) Redis, estimates each queue's oldest-message age and appends one history point.
:meth:`Fleet.summary` is the ``/api/summary`` document; the Prometheus collector reads the same state.

Oldest message age, without touching the messages (a peek with basic.get + requeue would count as a
delivery on a quorum queue and bring poison-message dead-lettering closer), is the smaller of two upper
bounds: the time since the queue was last seen empty (sampled each second), and, for a queue a live
worker consumes, the queue wait of the last task it started plus the time since (in a FIFO queue, every
message still waiting is younger than the last one taken). 0 when the queue is empty; unknown (null, no
sample) while neither bound exists (a queue non-empty since before the service started, not consumed).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluice.handles.client import CANCEL_RULES, CANCELS, UNIQUE_DUPLICATES
from sluice.settings import Settings
from sluice.telemetry import CANCELLED, HANDLE_EVENTS, OUTCOMES, RUN_BUCKETS, WAIT_BUCKETS
from sluice.topology import Topology
from sluice_metrics.collectors import QueueCollector
from sluice_metrics.processes import Hist, ProcessTable, Totals
from sluice_metrics.queue_stats import QueueSnapshot, QueueStatsSource
from sluice_metrics.redis_state import RedisSnapshot, RedisStateSource

__all__ = ["Fleet", "Point", "percentile"]

HISTORY = 300  # points, one a second: five minutes for the live page
RATE_WINDOW = 10.0  # seconds the rates and percentiles in the summary cover


def percentile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a bucketed histogram (linear inside a bucket, like histogram_quantile)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if seen + n >= rank and n > 0:
            if i >= len(bounds):  # the +Inf bucket: the highest finite bound is all we can say
                return bounds[-1]
            lo = bounds[i - 1] if i > 0 else 0.0
            return lo + (bounds[i] - lo) * (rank - seen) / n
        seen += n
    return bounds[-1]


def _merged(hists: dict[str, Hist], size: int) -> list[int]:
    out = [0] * size
    for h in hists.values():
        if len(h.counts) == size:
            for i, n in enumerate(h.counts):
                out[i] += n
    return out


@dataclass(frozen=True, slots=True)
class Point:
    """One history sample: cumulative counts at wall time ``t``, and the queue depths then."""

    t: float
    published: int
    done: dict[str, int]  # outcome -> count
    run: list[int]  # merged run-time buckets
    wait: list[int]
    depths: dict[str, int]
    consumed: dict[str, int]  # RabbitMQ queue -> tasks started from it (wait histogram count)


class Fleet:
    def __init__(
        self,
        settings: Settings,
        table: ProcessTable,
        source: QueueStatsSource,
        collector: QueueCollector,
        redis_source: RedisStateSource | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self.table = table
        self.source = source
        self.collector = collector
        self.redis_source = redis_source
        self.clock = clock
        self.started = time.time()  # wall time: the totals cover what processes seen since then did
        self.queues: QueueSnapshot | None = None
        self.redis: RedisSnapshot | None = None
        self.history: deque[Point] = deque(maxlen=HISTORY)
        self._empty_seen: dict[str, float] = {}
        self.ages: dict[str, float | None] = {}
        self._ticks = 0

    def rabbit_name(self, queue: str) -> str:
        """The RabbitMQ name of a sluice queue name (``default`` -> ``{prefix}.q.default``)."""
        try:
            return self.topology.queue(queue)
        except ValueError:
            return queue

    async def tick(self) -> None:
        now = self.clock()
        self.table.expire(now)
        self.source.watch(self.rabbit_name(q) for q in self.table.known_queues())
        snap = await self.source.read()
        self.collector.update(snap)
        self.queues = snap
        self._ticks += 1
        self._update_ages(snap, now)
        self.history.append(self._point(snap))

    async def read_redis(self) -> None:
        """Read the breakers, limits, schedules and counts from Redis (its own loop, apart from
        :meth:`tick`: a slow read, such as a ``SCAN`` over a keyspace of millions of task records, must
        not hold up the queue samples and their age bounds)."""
        if self.redis_source is not None:
            self.redis = await self.redis_source.read()

    def _update_ages(self, snap: QueueSnapshot, now: float) -> None:
        if not snap.broker_up:
            return
        waits = {self.rabbit_name(q): v for q, v in self.table.last_waits(now).items()}
        wall = time.time()
        ages: dict[str, float | None] = {}
        for q in snap.queues:
            if not q.present:
                continue
            if q.messages == 0:
                self._empty_seen[q.queue] = now
                ages[q.queue] = 0.0
                continue
            bounds = []
            if q.queue in self._empty_seen:
                bounds.append(now - self._empty_seen[q.queue])
            if q.queue in waits:
                at, wait = waits[q.queue]
                bounds.append(wait + max(0.0, wall - at))
            ages[q.queue] = round(min(bounds), 3) if bounds else None
        self.ages = ages

    def _point(self, snap: QueueSnapshot) -> Point:
        t = self.table.totals()
        done = dict.fromkeys(OUTCOMES, 0)
        for (_, outcome), n in t.done.items():
            done[outcome] = done.get(outcome, 0) + n
        return Point(
            t=time.time(),
            published=sum(t.published.values()),
            done=done,
            run=_merged(t.run, len(RUN_BUCKETS) + 1),
            wait=_merged(t.wait, len(WAIT_BUCKETS) + 1),
            depths={q.queue: q.messages for q in snap.queues if q.present},
            consumed={self.rabbit_name(q): h.count for q, h in t.wait.items()},
        )

    # ---- the summary
    def summary(self) -> dict[str, Any]:
        now = self.clock()
        totals = self.table.totals()
        last = self.history[-1] if self.history else None
        first = self._window_start()
        rates = _rates(first, last)
        snap = self.queues
        queue_rows = []
        for q in snap.queues if snap is not None else ():
            if not q.present:
                continue
            queue_rows.append(
                {
                    "queue": q.queue,
                    "kind": self._queue_kind(q.queue),
                    "messages": q.messages,
                    "consumers": q.consumers,
                    "rate": rates["consumed"].get(q.queue, 0.0),
                    "oldest_age": self.ages.get(q.queue),
                }
            )
        procs = sorted(self.table.processes.values(), key=lambda p: (p.kind, p.host, p.pid))
        redis = self.redis
        limits = _limit_rows(totals, redis)
        return {
            "at": time.time(),
            "started": self.started,
            "prefix": self.settings.prefix,
            "broker_up": None if snap is None else snap.broker_up,
            "redis_up": None if redis is None else redis.redis_up,
            "workers_alive": len(self.table.alive(now, "worker")),
            "in_progress": self.table.gauge_sum("in_progress", now),
            "totals": {
                "published": sum(totals.published.values()),
                "completed": _by_outcome(totals),
                "retry_budget_refusals": sum(totals.budget_refused.values()),
                "task_handles": _handle_totals(totals, redis, self.table.gauge_sum("task_waiters", now)),
            },
            "rates": {
                "published": rates["published"],
                "completed": rates["completed"],
                "outcomes": rates["outcomes"],
            },
            "latency": {
                "run": _quantiles(RUN_BUCKETS, first.run if first else None, last.run if last else None),
                "wait": _quantiles(WAIT_BUCKETS, first.wait if first else None, last.wait if last else None),
            },
            "queues": queue_rows,
            "processes": [p.describe(now, self.table.alive_after) for p in procs],
            "gone": [p.describe(now, self.table.alive_after) for p in reversed(self.table.gone[-10:])],
            "breakers": [{"name": n, "state": s} for n, s in (redis.breakers.items() if redis else ())],
            "limits": limits,
            "scheduler": {
                "leader": redis.scheduler_leader if redis else None,
                "term": redis.scheduler_term if redis else None,
                "schedules": list(redis.schedules) if redis else [],
            },
            "history": self._history_doc(),
        }

    def _window_start(self) -> Point | None:
        if not self.history:
            return None
        cutoff = self.history[-1].t - RATE_WINDOW
        for p in self.history:
            if p.t >= cutoff:
                return p
        return self.history[0]

    def _queue_kind(self, name: str) -> str:
        topo = self.topology
        if name == topo.dead_queue:
            return "dlq"
        if name.startswith(f"{topo.prefix}.delay."):
            return "delay"
        return "work"

    def _history_doc(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        points = list(self.history)
        for prev, cur in itertools.pairwise(points):
            dt = cur.t - prev.t
            if dt <= 0:
                continue
            q = _quantiles(RUN_BUCKETS, prev.run, cur.run)
            out.append(
                {
                    "t": round(cur.t, 3),
                    "published": round((cur.published - prev.published) / dt, 3),
                    "completed": round((sum(cur.done.values()) - sum(prev.done.values())) / dt, 3),
                    "outcomes": {o: round((cur.done[o] - prev.done.get(o, 0)) / dt, 3) for o in cur.done},
                    "p50": q["p50"],
                    "p90": q["p90"],
                    "p99": q["p99"],
                    "depths": cur.depths,
                }
            )
        return out


def _handle_totals(t: Totals, redis: RedisSnapshot | None, waiters: float) -> dict[str, Any]:
    """The task handles' figures: the workers' events, the counts kept in Redis (None while Redis is not
    read), cancels honoured (the ``cancelled`` outcome) and the waiters of live producers now."""
    out: dict[str, Any] = {e: t.handles.get(e, 0) for e in HANDLE_EVENTS}
    counts = redis.handle_counts if redis is not None and redis.redis_up else None
    for name, field in (
        ("cancels_recorded", CANCELS),
        ("cancel_rules_recorded", CANCEL_RULES),
        ("unique_duplicates", UNIQUE_DUPLICATES),
    ):
        out[name] = None if counts is None else counts.get(field, 0)
    out["cancels_honoured"] = _by_outcome(t)[CANCELLED]
    out["waiters"] = waiters
    return out


def _by_outcome(t: Totals) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for (_, outcome), n in t.done.items():
        out[outcome] += n
    return out


def _rates(first: Point | None, last: Point | None) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "published": 0.0,
        "completed": 0.0,
        "outcomes": dict.fromkeys(OUTCOMES, 0.0),
        "consumed": {},
    }
    if first is None or last is None or last.t - first.t <= 0:
        return zero
    dt = last.t - first.t
    return {
        "published": round(max(0, last.published - first.published) / dt, 3),
        "completed": round(max(0, sum(last.done.values()) - sum(first.done.values())) / dt, 3),
        "outcomes": {o: round(max(0, last.done[o] - first.done.get(o, 0)) / dt, 3) for o in last.done},
        "consumed": {
            q: round(max(0, n - first.consumed.get(q, 0)) / dt, 3) for q, n in last.consumed.items()
        },
    }


def _quantiles(
    bounds: tuple[float, ...], before: list[int] | None, after: list[int] | None
) -> dict[str, float | None]:
    if after is None:
        return {"p50": None, "p90": None, "p99": None}
    delta = after if before is None else [a - b for a, b in zip(after, before, strict=True)]
    return {f"p{int(q * 100)}": _round(percentile(bounds, delta, q)) for q in (0.5, 0.9, 0.99)}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _limit_rows(t: Totals, redis: RedisSnapshot | None) -> list[dict[str, Any]]:
    names = {n for n, _ in t.limits} | set(redis.limits if redis else ())
    rows = []
    for name in sorted(names):
        override = redis.limits.get(name) if redis else None
        rows.append(
            {
                "name": name,
                "override": None if override is None else override.get("rate"),
                "allowed": t.limits.get((name, "allowed"), 0),
                "deferred": t.limits.get((name, "deferred"), 0),
            }
        )
    return rows
