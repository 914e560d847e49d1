"""sluice metrics service: Prometheus metrics of a sluice deployment.

The names below load lazily, so ``import sluice_metrics`` (done by the ``sluice`` CLI) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.lazy import lazy_names

__all__ = [
    "QueueCollector",
    "QueueSnapshot",
    "QueueStats",
    "QueueStatsSource",
    "build_app",
    "listen",
    "queues_to_watch",
    "run",
    "serve",
]

_HOME = {
    "QueueCollector": "collectors",
    "QueueSnapshot": "queue_stats",
    "QueueStats": "queue_stats",
    "QueueStatsSource": "queue_stats",
    "build_app": "app",
    "listen": "service",
    "queues_to_watch": "queue_stats",
    "run": "service",
    "serve": "service",
}

if TYPE_CHECKING:
    from sluice_metrics.app import build_app
    from sluice_metrics.collectors import QueueCollector
    from sluice_metrics.queue_stats import QueueSnapshot, QueueStats, QueueStatsSource, queues_to_watch
    from sluice_metrics.service import listen, run, serve


__getattr__ = lazy_names("sluice_metrics", _HOME)
