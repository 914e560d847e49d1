"""The due-time step: a task whose ``x-sluice-eta`` is still ahead is sent on to its next delay tier.

In every pipeline (any task can be published with ``--delay``), first: a task not yet due must not
take a rate-limit unit, a claim or a lease. No Redis; a task without an eta costs one comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.protocol import TaskMessage
from sluice.resilience.clock import Clock
from sluice.tasks import Task
from sluice.topology import next_hop
from sluice_worker._wall import wall_ms
from sluice_worker.outcome import ETA, Deferred, FailurePolicy, Outcome
from sluice_worker.policies.step import Delivery, Step

if TYPE_CHECKING:
    from sluice_worker.policies.shared import Policies

__all__ = ["Eta", "due"]


def due(msg: TaskMessage, now_ms: int) -> Deferred | None:
    """``None`` when the task may run at ``now_ms``, else its hop (its ``x-sluice-eta`` is ahead)."""
    if msg.eta_ms is None:
        return None
    remaining = msg.eta_ms - now_ms
    return None if next_hop(remaining) is None else Deferred(ETA, remaining / 1000)


class Eta(Step):
    name = "eta"

    def __init__(self, task: Task, clock: Clock) -> None:
        super().__init__(task)
        self._clock = clock

    @classmethod
    def build(cls, task: Task, policies: Policies, failures: FailurePolicy) -> Eta:
        return cls(task, policies.clock)

    async def before(self, d: Delivery) -> Outcome | None:
        if d.msg.eta_ms is None:
            return None
        return due(d.msg, wall_ms(self._clock))
