"""What a :class:`~sluice.testing.TestWorker` keeps of each delivery: records to assert on.

A :class:`DeliveryRecord` is one delivery and the outcome the real runner decided for it (the worker's
one outcome model, :mod:`sluice_worker.outcome`); a :class:`TaskHistory` is every delivery of one task
id, in order. ``kind`` names an outcome in six words: ``acked``, ``skipped``, ``deferred``,
``retried``, ``dead_lettered``, ``cancelled``; ``metric`` is the worker's telemetry name of it (``success``,
``deferred_limit``, ``failed``...), the vocabulary of ``sluice_worker_tasks_total``.

A wait longer than a delay tier takes several hops (a 30 s retry waits 16 s, then 8, 4 and 2: each
time the worker sees its ``x-sluice-eta`` still ahead and sends it on, a ``Deferred("eta")``). Hops
are deliveries like the others (``deliveries``, :meth:`~sluice.testing.TestWorker.counts`), but a
history's ``kinds`` and ``outcomes`` leave them out: they say what the pipeline decided.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sluice.deadletters import DeadLetter
from sluice_worker.outcome import ETA, Ack, Cancelled, DeadLettered, Deferred, Outcome, Retry, Skipped

__all__ = [
    "ACKED",
    "CANCELLED",
    "DEAD_LETTERED",
    "DEFERRED",
    "RETRIED",
    "SKIPPED",
    "DeliveryRecord",
    "TaskHistory",
]

ACKED: Final = "acked"
SKIPPED: Final = "skipped"
DEFERRED: Final = "deferred"
RETRIED: Final = "retried"
DEAD_LETTERED: Final = "dead_lettered"
CANCELLED: Final = "cancelled"

_KINDS: Final[Mapping[type, str]] = {
    Ack: ACKED,
    Skipped: SKIPPED,
    Deferred: DEFERRED,
    Retry: RETRIED,
    DeadLettered: DEAD_LETTERED,
    Cancelled: CANCELLED,
}


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery: when it began (``at``, simulated seconds since the harness started), what it
    carried and what became of it (``outcome``)."""

    task_id: str
    task: str | None  # None: the message named no task (bad headers)
    queue: str
    attempt: int | None  # its x-sluice-attempt (None: missing or not a number)
    at: float
    outcome: Outcome
    headers: Mapping[str, Any] = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def kind(self) -> str:
        """``acked``, ``skipped``, ``deferred``, ``retried``, ``dead_lettered`` or ``cancelled``."""
        return _KINDS[type(self.outcome)]

    @property
    def metric(self) -> str:
        """The worker's telemetry name of the outcome (``success``, ``deferred_limit``, ``failed``...)."""
        return self.outcome.metric

    @property
    def reason(self) -> str | None:
        """Why it was skipped, deferred, retried (``retry``) or dead-lettered; ``None`` when acked."""
        return getattr(self.outcome, "reason", None)

    @property
    def delay(self) -> float | None:
        """Seconds a deferral or a retry waits; ``None`` for the other outcomes."""
        return self.outcome.delay if isinstance(self.outcome, (Deferred, Retry)) else None

    @property
    def ran(self) -> bool:
        """Did the handler run on this delivery?"""
        return self.outcome.ran

    @property
    def hop(self) -> bool:
        """Was it only sent on to its next delay tier (its eta still ahead)?"""
        return isinstance(self.outcome, Deferred) and self.outcome.reason == ETA


@dataclass(frozen=True, slots=True)
class TaskHistory:
    """Every delivery of one task id, in order, and its dead letter if it ended in the DLQ."""

    task_id: str
    deliveries: tuple[DeliveryRecord, ...]
    dead_letter: DeadLetter | None = None

    @property
    def decisions(self) -> list[DeliveryRecord]:
        """The deliveries but the hops between delay tiers."""
        return [d for d in self.deliveries if not d.hop]

    @property
    def outcomes(self) -> list[Outcome]:
        """The outcome of each delivery but the hops."""
        return [d.outcome for d in self.decisions]

    @property
    def kinds(self) -> list[str]:
        """``["retried", "retried", "acked"]``: one word per delivery but the hops."""
        return [d.kind for d in self.decisions]

    @property
    def hops(self) -> int:
        """Deliveries that only went on to the next delay tier."""
        return sum(d.hop for d in self.deliveries)

    @property
    def final(self) -> Outcome | None:
        """The last delivery's outcome (``None``: never delivered yet)."""
        return self.deliveries[-1].outcome if self.deliveries else None

    @property
    def acked(self) -> bool:
        """Did it end acked (the handler returned) or skipped (a duplicate)?"""
        return isinstance(self.final, (Ack, Skipped))

    @property
    def runs(self) -> int:
        """How many times the handler ran."""
        return sum(d.ran for d in self.deliveries)

    @property
    def retries(self) -> list[Retry]:
        return [d.outcome for d in self.deliveries if isinstance(d.outcome, Retry)]

    @property
    def deferrals(self) -> list[Deferred]:
        return [d.outcome for d in self.deliveries if isinstance(d.outcome, Deferred)]
