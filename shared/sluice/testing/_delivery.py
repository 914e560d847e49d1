"""One delivery in the harness: through the real runner, its outcome carried out as the worker's session does.

- ``Ack``, ``Skipped`` and ``Cancelled``: nothing more (the ack);
- ``Deferred`` and ``Retry``: the worker's own copy (:func:`sluice_worker.delays.republish` chooses
  its delay tier and headers at the clock's time, :func:`sluice_worker.delays.copy_for` makes it) goes
  back to the in-memory broker, due when its tier would return it;
- ``DeadLettered``: the worker's own dead copy (:func:`sluice_worker.dead_publish.dead_copy`), read back
  as ``sluice dlq`` reads the DLQ (:meth:`sluice.deadletters.DeadLetter.from_message`);
- any other object (a foreign failure policy's): dead-lettered ``unsupported_outcome``, as the session
  does; a ``GeneratorExit`` out of the runner is that handler's failure, as in the session.
"""

from __future__ import annotations

from typing import cast

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from sluice.deadletters import DeadLetter
from sluice.protocol import H_ATTEMPT, H_TASK
from sluice.resilience.clock import Clock
from sluice.testing._broker import Delivered, InMemoryBroker, Message, properties_of
from sluice.testing._records import DeliveryRecord
from sluice.topology import Topology
from sluice_worker._wall import wall_ms
from sluice_worker.dead_publish import dead_copy
from sluice_worker.delays import copy_for, republish
from sluice_worker.failures import settled
from sluice_worker.outcome import (
    ACK,
    Cancelled,
    DeadLettered,
    Deferred,
    Retry,
    Skipped,
)
from sluice_worker.runner import Runner

__all__ = ["deliver"]


async def deliver(
    runner: Runner, m: Message, broker: InMemoryBroker, clock: Clock, topology: Topology, at: float
) -> tuple[DeliveryRecord, DeadLetter | None]:
    """Run ``m`` (delivered ``at`` simulated seconds after the start) and carry out its outcome; answers
    its record and its dead letter, if it got one."""
    headers = m.headers
    try:
        outcome = settled(await runner.run(m.body, headers, m.message_id, False))
    except GeneratorExit as e:  # as in the session: see settled()
        outcome = settled(e)
    delivered = cast(DeliveredMessage, Delivered.of(m))
    dead: DeadLetter | None = None
    if outcome is ACK or type(outcome) in (Skipped, Cancelled):
        pass
    elif isinstance(outcome, (Deferred, Retry)):
        out = republish(outcome, wall_ms(clock))
        copy = copy_for(delivered, out.headers)
        wait = 0.0 if out.tier_ms is None else out.tier_ms / 1000
        props = properties_of(copy.message_id, copy.headers)
        broker.put(Message(copy.body, props, m.queue, clock.monotonic() + wait))
    elif isinstance(outcome, DeadLettered):
        copy = dead_copy(delivered, m.queue, outcome, wall_ms(clock))
        dead = DeadLetter.from_message(cast(AbstractIncomingMessage, copy), topology)
    attempt, task = headers.get(H_ATTEMPT), headers.get(H_TASK)
    record = DeliveryRecord(
        task_id=m.message_id or "",
        task=task if isinstance(task, str) else None,
        queue=m.queue,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        at=at,
        outcome=outcome,
        headers=headers,
        body=m.body,
    )
    return record, dead
