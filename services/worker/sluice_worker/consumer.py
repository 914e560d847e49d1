"""Consuming: a :class:`Consumer` keeps one :class:`~sluice_worker.session.Session` per broker connection.

Reconnection is supervised here rather than left to aio-pika's robust connection, which has come back from
a broker restart with zero consumers (aio-pika #231, #626): when the connection or a channel closes, or the
broker cancels a consumer, the session is dropped whole (its unacked deliveries will be redelivered, its
running handlers are cancelled with the channel) and a new one declares, sets QoS and consumes again.
The consumer's :class:`~sluice_worker.pauses.Pauses` (``SLUICE_PAUSE_BLOCKED``, on by default) outlives
its sessions: a queue paused when a session is lost starts paused in the next one while its block holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiormq.exceptions

from sluice.connection import BROKER_ERRORS, connect_plain
from sluice.errors import BrokerUnavailable, ConfigError
from sluice.settings import Settings, mask_url
from sluice.telemetry import NullTelemetry, Telemetry
from sluice_worker._pause_reads import BlockReader
from sluice_worker.log_throttle import LogThrottle
from sluice_worker.pauses import Pauses
from sluice_worker.recording import DeliveryRecorder
from sluice_worker.runner import Runner
from sluice_worker.session import Session

__all__ = ["Consumer", "Session"]

log = logging.getLogger("sluice.worker")

_MAX_BACKOFF = 4.0  # seconds between reconnection attempts, at most


class Consumer:
    """Keeps a :class:`Session` consuming ``queues`` until told to stop, reconnecting after a loss.

    The first connection must succeed (a wrong URL fails the command at once); after that every loss is
    retried with a capped backoff.
    """

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        queues: Sequence[str],
        *,
        name: str = "sluice-worker",
        recorder: DeliveryRecorder | None = None,
        telemetry: Telemetry | NullTelemetry | None = None,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.recorder = recorder
        self.queues = list(queues)
        self.name = name
        self.sessions = 0  # sessions opened so far (1 + reconnects)
        self._throttle = LogThrottle(clock=runner.clock)
        clock = runner.clock
        self.pauses = (
            Pauses(
                runner.registry,
                self.queues,
                BlockReader(settings, clock=clock),
                clock=clock,
                telemetry=telemetry,
            )
            if settings.pause_blocked
            else None
        )

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        try:
            await self._run(stop, force)
        finally:
            if self.pauses is not None:
                await self.pauses.aclose()

    async def _run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        s = self.settings
        slots = asyncio.Semaphore(s.concurrency)
        delay = 0.5
        while not stop.is_set():
            try:
                session = await self._open(slots)
            except BrokerUnavailable as e:
                if self.sessions == 0:
                    raise
                log.warning("cannot reconnect: %s; retrying in %.1fs", e, delay)
                if await _wait(stop, delay):
                    return
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            delay = 0.5
            self.sessions += 1
            log.info("connected to %s (session %d)", mask_url(s.amqp_url), self.sessions)
            log.info(
                "consuming queues %s with concurrency %d, prefetch %d",
                ", ".join(self.queues),
                s.concurrency,
                s.prefetch,
            )
            lost = asyncio.ensure_future(session.wait_lost())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                lost.cancel()
                await session.drain(s.grace_period, force)
                self._throttle.flush()
                return
            try:
                why = lost.result()
            except Exception as e:  # watching itself failed: the session is gone all the same
                why = repr(e)
            log.warning("lost the broker (%s): reconnecting", why)
            await session.close()

    async def _open(self, slots: asyncio.Semaphore) -> Session:
        conn = await connect_plain(self.settings, self.name)
        session = Session(conn, self.settings, self.runner, slots, self._throttle, self.recorder, self.pauses)
        try:
            await session.open(self.queues)
        except aiormq.exceptions.ChannelPreconditionFailed as e:
            await session.close()
            raise ConfigError(
                f"RabbitMQ refused the queue declaration ({e}); does a queue exist with another type? "
                f"(queue_type={self.settings.queue_type})"
            ) from None
        except BROKER_ERRORS as e:
            await session.close()
            raise BrokerUnavailable(f"cannot set up consuming: {e!r}") from None
        except BaseException:
            await session.close()
            raise
        return session


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
