"""Merging telemetry snapshots per process into fleet totals that only ever go up.

Each snapshot holds a process's counters since it started. The table keeps the latest snapshot of every
process (keyed by its random ``instance``) and a ``retired`` sum: when a process stops (a ``final``
snapshot), goes silent longer than ``expire_after``, or its counters go down (a reset), its last counts
move into ``retired``. Fleet total = retired + every live process's counts, so totals never drop when a
process goes away, and a restarted process (a new instance) starts from zero without double counting.
A snapshot with a ``seq`` not above the last one seen for its instance is late or duplicated: ignored.

Pure data, no I/O; ``now`` (monotonic seconds) is passed in, so tests drive the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.telemetry import HANDLE_EVENTS, OTHER, OUTCOMES, SNAPSHOT_VERSION

__all__ = ["Hist", "ProcessInfo", "ProcessTable", "Totals"]

_MAX_PROCESSES = 1000
_MAX_GONE = 50


@dataclass(slots=True)
class Hist:
    counts: list[int]
    sum: float = 0.0
    count: int = 0

    def add(self, other: Hist, sign: int = 1) -> None:
        if len(other.counts) != len(self.counts):
            return  # buckets changed between versions: keep ours
        for i, n in enumerate(other.counts):
            self.counts[i] += sign * n
        self.sum += sign * other.sum
        self.count += sign * other.count

    def copy(self) -> Hist:
        return Hist(list(self.counts), self.sum, self.count)


@dataclass(slots=True)
class Totals:
    """Counters of one process, or summed over several."""

    done: dict[tuple[str, str], int] = field(default_factory=dict)  # (task, outcome)
    run: dict[str, Hist] = field(default_factory=dict)  # task
    wait: dict[str, Hist] = field(default_factory=dict)  # queue
    published: dict[str, int] = field(default_factory=dict)  # queue
    limits: dict[tuple[str, str], int] = field(default_factory=dict)  # (limit, allowed|deferred)
    limit_wait: dict[str, Hist] = field(default_factory=dict)
    budget_refused: dict[str, int] = field(default_factory=dict)
    handles: dict[str, int] = field(default_factory=dict)  # task-handle event (HANDLE_EVENTS)
    throttles: dict[str, int] = field(default_factory=dict)  # upstream throttles, by the key or scope frozen
    pauses: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, reason): consumers paused

    def _counters(self) -> tuple[dict[Any, int], ...]:
        return (
            self.done,
            self.published,
            self.limits,
            self.budget_refused,
            self.handles,
            self.throttles,
            self.pauses,
        )

    def add(self, other: Totals, sign: int = 1) -> None:
        """Add ``other`` in (``sign=-1``: take out what an earlier ``add`` put in)."""
        for mine, theirs in zip(self._counters(), other._counters(), strict=True):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + sign * n
        for hmine, htheirs in (
            (self.run, other.run),
            (self.wait, other.wait),
            (self.limit_wait, other.limit_wait),
        ):
            for key, h in htheirs.items():
                if key in hmine:
                    hmine[key].add(h, sign)
                else:
                    hmine[key] = h.copy()

    def covers(self, other: Totals) -> bool:
        """True if no counter of ``other`` is above ours (ours is a later state of the same process)."""
        for mine, theirs in zip(self._counters(), other._counters(), strict=True):
            if any(mine.get(k, 0) < n for k, n in theirs.items()):
                return False
        return all(t in self.run and self.run[t].count >= h.count for t, h in other.run.items())

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Totals:
        outcomes = set(OUTCOMES)
        t = cls()
        for task, outcome, n in doc.get("done", ()):
            if outcome in outcomes:
                key = (str(task), str(outcome))
                t.done[key] = t.done.get(key, 0) + int(n)
        t.run = _hists(doc.get("run", {}))
        t.wait = _hists(doc.get("wait", {}))
        t.published = {str(q): int(n) for q, n in doc.get("published", {}).items()}
        for name, decision, n in doc.get("limits", ()):
            if decision in ("allowed", "deferred"):
                t.limits[(str(name), str(decision))] = int(n)
        t.limit_wait = _hists(doc.get("limit_wait", {}))
        t.budget_refused = {str(b): int(n) for b, n in doc.get("budget_refused", {}).items()}
        events = set(HANDLE_EVENTS)
        t.handles = {str(e): int(n) for e, n in doc.get("handles", {}).items() if e in events}
        t.throttles = {str(k): int(n) for k, n in doc.get("throttles", {}).items()}
        for queue, reason, n in doc.get("pauses", ()):
            t.pauses[(str(queue), str(reason))] = int(n)
        return t


def _hists(raw: Mapping[str, Any]) -> dict[str, Hist]:
    return {
        str(k): Hist([int(c) for c in v["counts"]], float(v["sum"]), int(v["count"])) for k, v in raw.items()
    }


@dataclass(slots=True)
class ProcessInfo:
    instance: str
    kind: str
    host: str
    pid: int
    started: float  # the process's wall clock at start
    seq: int
    seen: float  # our monotonic clock at the last snapshot
    totals: Totals
    gauges: dict[str, float]
    last_wait: dict[str, tuple[float, float]]  # queue -> (process wall time, wait seconds)
    stopped: str | None = None  # why it is gone: "stopped", "silent", "reset"

    def describe(self, now: float, alive_after: float) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "last_seen_seconds": round(max(0.0, now - self.seen), 3),
            "alive": self.stopped is None and now - self.seen <= alive_after,
            "stopped": self.stopped,
            "in_progress": self.gauges.get("in_progress", 0.0),
            "completed": sum(self.totals.done.values()),
            "published": sum(self.totals.published.values()),
        }


class ProcessTable:
    """Latest snapshot per process plus the retired counts of processes gone."""

    def __init__(self, *, alive_after: float = 5.0, expire_after: float | None = None) -> None:
        self.alive_after = alive_after
        self.expire_after = max(alive_after, expire_after if expire_after is not None else 3 * alive_after)
        self.processes: dict[str, ProcessInfo] = {}
        # silent ones (their totals and last seq): taken back out of retired if they return
        self._expired: dict[str, tuple[Totals, int]] = {}
        self.gone: list[ProcessInfo] = []  # the most recent ones, for display
        self.retired = Totals()
        self.accepted = 0
        self.stale = 0
        self.invalid = 0
        self.resets = 0

    def ingest(self, doc: Any, now: float) -> bool:
        """Take one snapshot; False if it was ignored (invalid, late or duplicate)."""
        try:
            if not isinstance(doc, dict) or doc.get("v") != SNAPSHOT_VERSION:
                raise ValueError("not a v1 snapshot")
            instance, seq = str(doc["instance"]), int(doc["seq"])
            totals = Totals.parse(doc)
            gauges = {str(k): float(v) for k, v in doc.get("gauges", {}).items()}
            last_wait = {str(q): (float(a), float(w)) for q, (a, w) in doc.get("last_wait", {}).items()}
            info = ProcessInfo(
                instance,
                str(doc["kind"]),
                str(doc["host"]),
                int(doc["pid"]),
                float(doc["started"]),
                seq,
                now,
                totals,
                gauges,
                last_wait,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            self.invalid += 1
            return False
        old = self.processes.get(instance)
        back = self._expired.get(instance)
        if back is not None:  # silent for a while (a broker outage, say), now back: un-retire it
            back_totals, back_seq = back
            if seq <= back_seq:  # a late or repeated snapshot of the silent one: it stays retired
                self.stale += 1
                return False
            del self._expired[instance]
            self.retired.add(back_totals, -1)
            old = ProcessInfo(
                instance, info.kind, info.host, info.pid, info.started, back_seq, now, back_totals, {}, {}
            )
        if old is not None:
            if seq <= old.seq:
                self.stale += 1
                return False
            if not totals.covers(old.totals):  # counters went down: a reset inside the same instance
                self.resets += 1
                self.retired.add(old.totals)
        elif len(self.processes) >= _MAX_PROCESSES:
            self.invalid += 1
            return False
        self.accepted += 1
        if doc.get("final"):
            info.stopped = "stopped"
            self._retire(info)
            self.processes.pop(instance, None)
        else:
            self.processes[instance] = info
        return True

    def expire(self, now: float) -> None:
        """Retire processes silent for longer than ``expire_after``."""
        for instance, p in list(self.processes.items()):
            if now - p.seen > self.expire_after:
                p.stopped = "silent"
                self._retire(p)
                del self.processes[instance]
                self._expired[instance] = (p.totals, p.seq)
                if len(self._expired) > _MAX_PROCESSES:
                    del self._expired[next(iter(self._expired))]

    def _retire(self, p: ProcessInfo) -> None:
        self.retired.add(p.totals)
        self.gone.append(p)
        del self.gone[:-_MAX_GONE]

    def totals(self) -> Totals:
        out = Totals()
        out.add(self.retired)
        for p in self.processes.values():
            out.add(p.totals)
        return out

    def alive(self, now: float, kind: str | None = None) -> list[ProcessInfo]:
        return [
            p
            for p in self.processes.values()
            if now - p.seen <= self.alive_after and (kind is None or p.kind == kind)
        ]

    def gauge_sum(self, name: str, now: float) -> float:
        return sum(p.gauges.get(name, 0.0) for p in self.alive(now))

    def gauge_sums(self, prefix: str, now: float) -> dict[str, float]:
        """Gauges named ``prefix`` + a label value (``consumers_paused:QUEUE``), summed over live processes."""
        out: dict[str, float] = {}
        for p in self.alive(now):
            for name, v in p.gauges.items():
                if name.startswith(prefix):
                    out[name[len(prefix) :]] = out.get(name[len(prefix) :], 0.0) + v
        return out

    def last_waits(self, now: float) -> dict[str, tuple[float, float]]:
        """Per queue, the latest (process wall time, wait) any live worker reported."""
        out: dict[str, tuple[float, float]] = {}
        for p in self.alive(now):
            for q, (at, w) in p.last_wait.items():
                if q not in out or at > out[q][0]:
                    out[q] = (at, w)
        return out

    def known_queues(self) -> Iterable[str]:
        """Work queues named in snapshots (worker waits, producer publishes), sluice names."""
        seen: dict[str, None] = {}
        for p in self.processes.values():
            for q in (*p.totals.wait, *p.totals.published):
                if q != OTHER:
                    seen[q] = None
        return seen.keys()
