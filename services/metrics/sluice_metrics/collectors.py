"""Prometheus collectors: they turn the latest reads into metric families at scrape time.

A collector holds no broker connection: the HTTP handler awaits a fresh read, hands it to
:meth:`QueueCollector.update`, then renders the registry. Later sources (per-worker snapshots from
the metrics exchange) get their own collector here, on the same injected registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice_metrics.queue_stats import QueueSnapshot

__all__ = ["ERROR_KINDS", "QueueCollector"]

# what sluice_metrics_scrape_errors_total{kind} counts
ERROR_KINDS = ("broker", "timeout", "missing_queue")


class QueueCollector(Collector):
    """``sluice_up``, ``sluice_broker_up``, per-queue depth/consumers/presence and scrape errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: QueueSnapshot | None = None
        self._errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)

    def update(self, snapshot: QueueSnapshot) -> None:
        """Make ``snapshot`` the one the next scrape shows; add its errors to the running totals."""
        with self._lock:
            self._snapshot = snapshot
            for kind, n in snapshot.errors.items():
                self._errors[kind] = self._errors.get(kind, 0) + n

    @property
    def broker_up(self) -> bool | None:
        """Whether the last read reached the broker; None before the first read."""
        snap = self._snapshot
        return None if snap is None else snap.broker_up

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None, {})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap, errors = self._snapshot, dict(self._errors)
        yield from self._families(snap, errors)

    @staticmethod
    def _families(snap: QueueSnapshot | None, errors: dict[str, int]) -> Iterator[Metric]:
        up = GaugeMetricFamily("sluice_up", "1 while the sluice metrics service answers scrapes")
        broker = GaugeMetricFamily(
            "sluice_broker_up", "1 if the last scrape read the queues from RabbitMQ, 0 if it could not"
        )
        messages = GaugeMetricFamily(
            "sluice_queue_messages", "messages ready for delivery in the queue", labels=["queue"]
        )
        consumers = GaugeMetricFamily("sluice_queue_consumers", "consumers on the queue", labels=["queue"])
        present = GaugeMetricFamily(
            "sluice_queue_present", "1 if the queue exists on RabbitMQ, 0 if it does not", labels=["queue"]
        )
        scrape_errors = CounterMetricFamily(
            "sluice_metrics_scrape_errors",
            "failures while reading queue stats, by kind (broker, timeout, missing_queue)",
            labels=["kind"],
        )
        duration = GaugeMetricFamily(
            "sluice_metrics_scrape_duration_seconds", "seconds the last read of the queue stats took"
        )
        if snap is not None:
            up.add_metric([], 1)
            broker.add_metric([], 1 if snap.broker_up else 0)
            for q in snap.queues:
                present.add_metric([q.queue], 1 if q.present else 0)
                if q.present:
                    messages.add_metric([q.queue], q.messages)
                    consumers.add_metric([q.queue], q.consumers)
            duration.add_metric([], snap.duration)
            for kind, n in sorted(errors.items()):
                scrape_errors.add_metric([kind], n)
        yield from (up, broker, messages, consumers, present, scrape_errors, duration)
