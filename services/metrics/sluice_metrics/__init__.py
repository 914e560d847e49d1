"""sluice metrics service: Prometheus metrics of a sluice deployment.

The names below load lazily, so ``import sluice_metrics`` (done by the ``sluice`` CLI) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "QueueCollector": "sluice_metrics.collectors",
    "QueueSnapshot": "sluice_metrics.queue_stats",
    "QueueStats": "sluice_metrics.queue_stats",
    "QueueStatsSource": "sluice_metrics.queue_stats",
    "build_app": "sluice_metrics.app",
    "listen": "sluice_metrics.service",
    "queues_to_watch": "sluice_metrics.queue_stats",
    "run": "sluice_metrics.service",
    "serve": "sluice_metrics.service",
}

if TYPE_CHECKING:
    from sluice_metrics.app import build_app
    from sluice_metrics.collectors import QueueCollector
    from sluice_metrics.queue_stats import QueueSnapshot, QueueStats, QueueStatsSource, queues_to_watch
    from sluice_metrics.service import listen, run, serve


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'sluice_metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
