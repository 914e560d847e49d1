"""sluice's scheduler service: fires periodic schedules from several replicas, each occurrence once.

``sluice scheduler`` (or ``python -m sluice_scheduler``) is the command; :class:`Scheduler` runs one inside an
existing event loop (tests, embedding). Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.lazy import lazy_names

if TYPE_CHECKING:
    from sluice_scheduler.firing_loop import FireLoop
    from sluice_scheduler.leadership import Leadership
    from sluice_scheduler.metrics import SchedulerMetrics
    from sluice_scheduler.service import LazyPublisher, Scheduler, serve

__all__ = ["FireLoop", "LazyPublisher", "Leadership", "Scheduler", "SchedulerMetrics", "serve"]

_WHERE = {
    "FireLoop": "firing_loop",
    "Leadership": "leadership",
    "SchedulerMetrics": "metrics",
    "LazyPublisher": "service",
    "Scheduler": "service",
    "serve": "service",
}

__getattr__ = lazy_names("sluice_scheduler", _WHERE)
