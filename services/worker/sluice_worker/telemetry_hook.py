"""Kept for ``lifecycle.py`` only: the delivery recorder is now :mod:`sluice_worker.recording`.

Remove this module once ``lifecycle.py`` imports ``DeliveryRecorder`` from :mod:`sluice_worker.recording`.
"""

from __future__ import annotations

from sluice_worker.recording import DeliveryRecorder

__all__ = ["DeliveryRecorder"]
