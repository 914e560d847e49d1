"""Kept for ``lifecycle.py`` only: the policy gate is now :mod:`sluice_worker.policies` (a pipeline of steps).

``PolicyGate`` is :class:`~sluice_worker.policies.shared.Policies`. Remove this module once
``lifecycle.py`` imports ``Policies`` and ``redis_for`` from :mod:`sluice_worker.policies`.
"""

from __future__ import annotations

from sluice_worker.policies.shared import Policies as PolicyGate
from sluice_worker.policies.shared import redis_for

__all__ = ["PolicyGate", "redis_for"]
