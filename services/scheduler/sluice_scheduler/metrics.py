"""The scheduler's Prometheus series (its own registry, served at ``/metrics``; docs/schedules.md lists them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

__all__ = ["LAG_BUCKETS", "SchedulerMetrics"]

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class SchedulerMetrics:
    """One scheduler process's series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.leader = Gauge(
            "sluice_scheduler_leader", "1 while this scheduler holds the leader lease", registry=r
        )
        self.store_up = Gauge(
            "sluice_scheduler_store_up", "1 while the last call to Redis succeeded", registry=r
        )
        self.schedules = Gauge(
            "sluice_scheduler_schedules", "schedules in the store (the leader's last read)", registry=r
        )
        self.leader_changes = Counter(
            "sluice_scheduler_leader_changes",
            "times this scheduler took the lead (a new fencing token)",
            registry=r,
        )
        self.fires = Counter(
            "sluice_scheduler_fires", "occurrences fired (confirmed by the broker)", ["schedule"], registry=r
        )
        self.caught_up = Counter(
            "sluice_scheduler_caught_up",
            "fires of occurrences missed while no scheduler ran",
            ["schedule"],
            registry=r,
        )
        self.skipped = Counter(
            "sluice_scheduler_skipped",
            "missed occurrences not fired, per the catch-up policy",
            ["schedule"],
            registry=r,
        )
        self.publish_failures = Counter(
            "sluice_scheduler_publish_failures",
            "fires not confirmed by the broker (sent again later)",
            registry=r,
        )
        self.lag = Histogram(
            "sluice_scheduler_fire_lag_seconds",
            "from an occurrence's due time to its confirmed publish",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.leader.set(0)
        self.store_up.set(0)
