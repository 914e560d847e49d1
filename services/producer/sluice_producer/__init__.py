"""The producer service: ``sluice publish``, the ``sluice producer`` HTTP API, and :class:`Enqueuer`
(publishing with task handles from Python: ``track``, ``unique_key``).

The public names are loaded on first use, so ``sluice --help`` (which imports :mod:`.cli`) never
imports FastAPI or aio-pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.lazy import lazy_names

if TYPE_CHECKING:
    from sluice_producer.app import create_app
    from sluice_producer.bulk import publish_all
    from sluice_producer.handled import Enqueued, Enqueuer, HandledMessage, handled
    from sluice_producer.link import BrokerLink, BrokerState
    from sluice_producer.models import BatchAccepted, BatchIn, BatchNotConfirmed, TaskAccepted, TaskIn
    from sluice_producer.server import serve, serve_async

__all__ = [
    "BatchAccepted",
    "BatchIn",
    "BatchNotConfirmed",
    "BrokerLink",
    "BrokerState",
    "Enqueued",
    "Enqueuer",
    "HandledMessage",
    "TaskAccepted",
    "TaskIn",
    "create_app",
    "handled",
    "publish_all",
    "serve",
    "serve_async",
]

_HOME = {
    "create_app": "app",
    "publish_all": "bulk",
    "BrokerLink": "link",
    "BrokerState": "link",
    "Enqueued": "handled",
    "Enqueuer": "handled",
    "HandledMessage": "handled",
    "handled": "handled",
    "BatchAccepted": "models",
    "BatchIn": "models",
    "BatchNotConfirmed": "models",
    "TaskAccepted": "models",
    "TaskIn": "models",
    "serve": "server",
    "serve_async": "server",
}


__getattr__ = lazy_names("sluice_producer", _HOME)
