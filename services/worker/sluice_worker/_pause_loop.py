"""The session's side of pausing (:mod:`sluice_worker.pauses` decides): one task per session that cancels
the consumer of a queue whose tasks are all blocked (``basic.cancel``) and consumes it again
(``basic.consume``, through the session) once :class:`~sluice_worker.pauses.Pauses` finds the block
ended. It wakes when an outcome may pause a queue (``Pauses.changed``) or a paused queue's re-read is
due, on the worker's clock. A failure of its own consumes every queue again: no bug may leave a queue
paused for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiormq.abc import AbstractChannel as RawChannel

from sluice.connection import BROKER_ERRORS
from sluice_worker.pauses import Pauses

__all__ = ["PauseLoop"]

log = logging.getLogger("sluice.worker")

_CANCEL_TIMEOUT = 5.0
_CANCEL_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *BROKER_ERRORS)


class PauseLoop:
    """Pauses and resumes the consumers of one session's ``queues``. ``tags``: the session's consumer tag
    of each queue it consumes (a paused queue has none); ``consume``: consume a queue again, recording
    its tag there; ``closing``: the session drains or closes (nothing is resumed then)."""

    def __init__(
        self,
        raw: RawChannel,
        pauses: Pauses,
        queues: Sequence[str],
        tags: dict[str, str],
        consume: Callable[[str], Awaitable[None]],
        closing: Callable[[], bool],
    ) -> None:
        self._raw = raw
        self._pauses = pauses
        self._queues = list(queues)
        self._tags = tags
        self._consume = consume
        self._closing = closing

    async def run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours must not leave a queue paused for good: consume them all
            log.exception("the pause loop failed; consuming every queue again")
            for q in self._queues:
                if q not in self._tags and not self._closing():
                    await self._resume(q)

    async def _loop(self) -> None:
        pauses, clock = self._pauses, self._pauses.clock
        while not self._closing():
            pauses.changed.clear()
            for q in self._queues:
                if q in self._tags:
                    if pauses.blocked(q) is not None and (block := await pauses.confirm(q)) is not None:
                        pauses.hold(q, block)
                        await self._pause(q, block.reason, block.until - clock.monotonic())
                elif q in pauses.paused and (pauses.due(q) <= clock.monotonic() or pauses.blocked(q) is None):
                    # its re-read is due, or one of its tasks ran meanwhile (a delivery prefetched
                    # before the pause, a trial): read it now
                    block = await pauses.reread(q)
                    if block is None:
                        await self._resume(q)
                    else:
                        pauses.hold(q, block)
                if self._closing():
                    return
            due = pauses.next_due()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(pauses.changed.wait())]
            if due is not None:
                waits.append(asyncio.ensure_future(clock.sleep(max(0.0, due - clock.monotonic()))))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def _pause(self, queue: str, reason: str, left: float) -> None:
        tag = self._tags.pop(queue)
        log.info(
            "pausing the consumer of queue %s: all its tasks are blocked (%s, %.1f s)", queue, reason, left
        )
        try:
            async with asyncio.timeout(_CANCEL_TIMEOUT):
                await self._raw.basic_cancel(tag)
        except _CANCEL_ERRORS as e:  # the channel is going: the session is lost and reopened
            log.debug("cannot cancel the consumer of %s: %r", queue, e)

    async def _resume(self, queue: str) -> None:
        self._pauses.release(queue)
        log.info("resuming the consumer of queue %s", queue)
        try:
            await self._consume(queue)
        except BROKER_ERRORS as e:  # the channel is going: the new session consumes it
            log.debug("cannot consume %s again: %r", queue, e)
