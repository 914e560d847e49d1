"""The in-memory broker of :mod:`sluice.testing`: every queue and delay tier as one list ordered by due time.

A message is what RabbitMQ would hold: a body and its AMQP properties (the contract's, as the
producer sets them: ``message_id``, ``content_type``, the ``x-sluice-*`` headers), the sluice queue it
is for, and when it is *due* on the fake clock: now for a work queue, after the tier's TTL for a copy
in a delay tier (the tier a copy goes to is chosen by the producer's and the worker's own code,
:func:`sluice.topology.next_hop` and :func:`sluice_worker.delays.republish`). So the delay tiers are
simulated by the clock alone; there is no prefetch, no redelivery, no ordering between queues but
the due time (then the order of publishing).

:class:`Delivered` lets the worker's own copy makers (:func:`sluice_worker.delays.copy_for`,
:func:`sluice_worker.dead_publish.dead_copy`) read a message as if the broker had delivered it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiormq import spec

__all__ = ["Delivered", "InMemoryBroker", "Message", "properties_of"]


def properties_of(message_id: str | None, headers: Mapping[str, Any] | None) -> spec.Basic.Properties:
    """The AMQP properties of a task as :meth:`sluice.Publisher.properties` sets them."""
    return spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=message_id,
        headers=dict(headers) if headers is not None else None,
        app_id="sluice",
    )


@dataclass(frozen=True, slots=True)
class Message:
    """A message held by the broker: due at ``due`` (the fake clock's monotonic seconds)."""

    body: bytes
    properties: spec.Basic.Properties = field(repr=False)
    queue: str
    due: float

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id


@dataclass(frozen=True, slots=True)
class _Header:
    properties: spec.Basic.Properties


@dataclass(frozen=True, slots=True)
class Delivered:
    """A :class:`Message` in the shape of aiormq's ``DeliveredMessage`` (what the worker's copy makers
    read: ``body`` and ``header.properties``)."""

    body: bytes
    header: _Header
    redelivered: bool = False

    @classmethod
    def of(cls, m: Message) -> Delivered:
        return cls(m.body, _Header(m.properties))


class InMemoryBroker:
    """Messages by due time, then publish order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Message]] = []
        self._order = itertools.count()

    def put(self, m: Message) -> None:
        heapq.heappush(self._heap, (m.due, next(self._order), m))

    def next_due(self) -> float | None:
        """When the first message is due (``None``: the broker is empty)."""
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> Message | None:
        """The first message due at ``now``, taken off the broker (``None``: none is due)."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def describe(self, now: float) -> str:
        """How many messages are left and which comes next (for an error message)."""
        pending = self.messages()
        if not pending:
            return "nothing left in the queues"
        m = pending[0]
        h = m.headers
        return (
            f"{len(pending)} left in the queues; next: task {h.get('x-sluice-task')!r} id {m.message_id} "
            f"attempt {h.get('x-sluice-attempt')}, due in {m.due - now:g}s"
        )

    def messages(self) -> list[Message]:
        """Every message still held, in the order they will be delivered."""
        return [m for _, _, m in sorted(self._heap)]

    def __len__(self) -> int:
        return len(self._heap)
