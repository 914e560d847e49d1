"""Fair share per tenant: which sub-queue of its queue a fair task is routed to (docs/policies.md).

A task declared ``@task(..., fair="tenant")`` (or ``fair=True`` with a keyed rate limit, or
``fair=Fair("tenant", shards=16)``) is published not to its queue ``Q`` but to one of ``shards``
sub-queues ``Q.f0`` .. ``Q.f{shards-1}`` (RabbitMQ queues ``{prefix}.q.Q.f{i}``, declared like any work
queue: quorum, bound to the tasks exchange with routing key ``Q.f{i}`` and to the requeue exchange with
``*.Q.f{i}``), chosen by the tenant, the payload's value at the key::

    i = crc32(utf8(value)) mod shards          (zlib.crc32, the IEEE CRC-32 every language has)

A worker that runs a fair task consumes ``Q`` and each sub-queue, one consumer each with its own prefetch,
so the broker feeds it from every sub-queue side by side: a tenant's backlog fills its own sub-queue and
another tenant's task waits behind at most one prefetch window of each busy sub-queue, not behind the
backlog. A retry or deferral goes back to the sub-queue it came from (its delay-tier routing key names
it), a dead letter records it as its queue, so ``sluice dlq replay`` sends it back there too.

A payload without the key, a task published to a queue other than its own, or a task the publisher does
not know (no ``--tasks``), goes to ``Q`` itself: served as one more share, not fairly among its tenants.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.errors import TaskDefinitionError
from sluice.policy import Fair, payload_field

__all__ = ["FairRoute", "FairRoutes", "shard_of", "sub_queue", "sub_queues"]


def shard_of(value: str, shards: int) -> int:
    """The sub-queue index of tenant ``value``: CRC-32 of its UTF-8 bytes, modulo ``shards``."""
    return zlib.crc32(value.encode("utf-8")) % shards


def sub_queue(queue: str, shard: int) -> str:
    """The sluice queue name of sub-queue ``shard`` of ``queue`` (``{queue}.f{shard}``)."""
    return f"{queue}.f{shard}"


def sub_queues(queue: str, shards: int) -> list[str]:
    return [sub_queue(queue, i) for i in range(shards)]


@dataclass(frozen=True, slots=True)
class FairRoute:
    """A fair task's routing: its queue, the payload field naming the tenant, the sub-queue count."""

    queue: str
    key: str
    shards: int


class FairRoutes:
    """The fair tasks a publisher or worker knows, by task name (:meth:`sluice.tasks.Registry.fair_routes`).

    Every fair task of one queue must declare the same ``shards`` (the sub-queues are the queue's), and no
    queue may be named like a fair queue's sub-queue: both are a :class:`TaskDefinitionError`.
    """

    __slots__ = ("_by_task", "_shards")

    def __init__(self, routes: Mapping[str, FairRoute] | None = None) -> None:
        self._by_task: dict[str, FairRoute] = dict(routes or {})
        self._shards: dict[str, int] = {}
        for name, r in sorted(self._by_task.items()):
            known = self._shards.setdefault(r.queue, r.shards)
            if known != r.shards:
                raise TaskDefinitionError(
                    f"task {name!r}: queue {r.queue!r} is fair with {known} shards for another task; "
                    f"every fair task of a queue declares the same shards (got {r.shards})"
                )

    @classmethod
    def of(cls, tasks: Iterable[tuple[str, str, Fair | None]]) -> FairRoutes:
        """From (task name, queue, its ``fair`` policy) triples; tasks without one are left out."""
        routes: dict[str, FairRoute] = {}
        queues: set[str] = set()
        for name, queue, fair in tasks:
            queues.add(queue)
            if fair is not None and fair.key is not None:
                routes[name] = FairRoute(queue, fair.key, fair.shards)
        made = cls(routes)
        for q in sorted(queues):
            for fq, n in made._shards.items():
                if q in sub_queues(fq, n):
                    raise TaskDefinitionError(f"queue {q!r} is a sub-queue name of fair queue {fq!r}")
        return made

    def __bool__(self) -> bool:
        return bool(self._by_task)

    def shards(self, queue: str) -> int | None:
        """The sub-queue count of ``queue`` if a fair task of it is known, else None."""
        return self._shards.get(queue)

    def route(self, task: str, queue: str, payload: Mapping[str, Any]) -> str:
        """The sluice queue to publish task ``task`` of ``queue`` with ``payload`` to: a sub-queue when
        the task is fair, ``queue`` is its own and the payload names a tenant; else ``queue``."""
        r = self._by_task.get(task)
        if r is None or r.queue != queue:
            return queue
        value = payload_field(payload, r.key)
        if value is None:
            return queue
        return sub_queue(queue, shard_of(value, r.shards))

    def expand(self, queues: Sequence[str]) -> list[str]:
        """``queues`` with each fair queue followed by its sub-queues: what a worker consumes."""
        out: list[str] = []
        for q in queues:
            out.append(q)
            n = self._shards.get(q)
            if n is not None:
                out.extend(s for s in sub_queues(q, n) if s not in queues)
        return list(dict.fromkeys(out))
