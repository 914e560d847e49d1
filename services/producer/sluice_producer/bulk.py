"""Publishing many tasks, confirms in flight, stopping early when the broker itself fails.

:meth:`sluice.publisher.Publisher.publish_many` keeps ``publish_window`` publishes awaiting confirms.
When the broker is lost or blocked every one of them would wait ``publish_timeout``, window after
window; :func:`publish_all` stops feeding new tasks after the first broker-level failure and marks
the rest as not attempted, so a dead broker costs one timeout, not one per window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from sluice.errors import BrokerUnavailable, PublishTimeout, SluiceError
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher, PublishOutcome
from sluice.telemetry import NullTelemetry, Telemetry

__all__ = ["NotAttempted", "count_published", "publish_all"]

# failures that say the broker, not this one task, is the problem
BROKER_LEVEL: tuple[type[SluiceError], ...] = (BrokerUnavailable, PublishTimeout)


class NotAttempted(BrokerUnavailable):
    """Not published: the broker failed on an earlier task of the same run."""


async def publish_all(
    publisher: Publisher,
    messages: Sequence[TaskMessage],
    on_done: Callable[[PublishOutcome], None] | None = None,
) -> list[PublishOutcome]:
    """Publish ``messages`` in order; one outcome per message, by index. Never raises per task."""
    outcomes: list[PublishOutcome | None] = [None] * len(messages)
    failed = asyncio.Event()
    fed = 0

    def done(out: PublishOutcome) -> None:
        outcomes[out.index] = out
        if isinstance(out.error, BROKER_LEVEL):
            failed.set()
        if on_done is not None:
            on_done(out)

    async def feed() -> AsyncIterator[TaskMessage]:
        nonlocal fed
        for msg in messages:
            if failed.is_set():
                return
            fed += 1
            yield msg

    # declare every queue first, under the publish deadline: a blocked broker must not hang here
    for queue in dict.fromkeys(m.queue for m in messages):
        try:
            async with asyncio.timeout(publisher.settings.publish_timeout):
                await publisher.ensure_queue(queue)
        except (TimeoutError, SluiceError) as e:
            err: SluiceError = (
                e
                if isinstance(e, SluiceError)
                else PublishTimeout(
                    f"declaring queue {queue!r} took over {publisher.settings.publish_timeout:g}s"
                )
            )
            return _all_failed(messages, err, on_done)

    await publisher.publish_many(feed(), done)
    first = next((o.error for o in outcomes if o is not None and o.error is not None), None)
    for i in range(fed, len(messages)):
        out = PublishOutcome(
            i, messages[i].id, NotAttempted(f"not attempted after an earlier failure: {first}")
        )
        outcomes[i] = out
        if on_done is not None:
            on_done(out)
    return [o for o in outcomes if o is not None]


def _all_failed(
    messages: Sequence[TaskMessage], err: SluiceError, on_done: Callable[[PublishOutcome], None] | None
) -> list[PublishOutcome]:
    outs = [PublishOutcome(i, m.id, err) for i, m in enumerate(messages)]
    if on_done is not None:
        for out in outs:
            on_done(out)
    return outs


def count_published(
    telemetry: Telemetry | NullTelemetry, messages: Sequence[TaskMessage], outcomes: Sequence[PublishOutcome]
) -> None:
    """Count the confirmed ones in ``telemetry``, per queue (one call per queue, not per task)."""
    per_queue: dict[str, int] = {}
    for out in outcomes:
        if out.error is None:
            queue = messages[out.index].queue
            per_queue[queue] = per_queue.get(queue, 0) + 1
    for queue, n in per_queue.items():
        telemetry.published(queue, n)
