"""The waiters of one :class:`TaskHandles`: one subscription to the ended channel, shared by all of them.

A waiter registers a future for its task id *before* it reads the status, so a notification that
arrives between the read and the wait is not lost. A notification (the id, published by the script
that wrote the terminal state) resolves every future of that id; a reconnect of the subscription
resolves all of them (a notification may have been missed while it was down): each waiter then reads
the status again. Nothing here talks to Redis but the subscription.
"""

from __future__ import annotations

import asyncio
import logging

from sluice.redis_client import AnyRedis
from sluice.resilience.clock import Clock

from ._subscription import Subscription
from ._timing import until_done

__all__ = ["Waiters"]


class Waiters:
    def __init__(self, redis: AnyRedis, channel: str, *, clock: Clock, logger: logging.Logger) -> None:
        self._clock = clock
        self._futures: dict[str, set[asyncio.Future[None]]] = {}
        self.subscription = Subscription(
            redis,
            channel,
            on_message=self._ended,
            on_connected=self._wake_all,
            clock=clock,
            logger=logger,
            what="TaskHandles waiters",
        )

    @property
    def live(self) -> bool:
        return self.subscription.live

    @property
    def count(self) -> int:
        """Waiters waiting now."""
        return sum(map(len, self._futures.values()))

    async def ensure(self, within: float) -> None:
        """Subscribe (once); wait at most ``within`` seconds for the first attempt."""
        await self.subscription.start(within)

    def register(self, task_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(task_id, set()).add(fut)
        return fut

    def discard(self, task_id: str, fut: asyncio.Future[None]) -> None:
        futures = self._futures.get(task_id)
        if futures is not None:
            futures.discard(fut)
            if not futures:
                del self._futures[task_id]

    async def sleep(self, fut: asyncio.Future[None], seconds: float) -> None:
        """Until ``fut`` is resolved (a notification) or ``seconds`` have passed on the clock."""
        await until_done(self._clock, seconds, fut)

    def _ended(self, task_id: str) -> None:
        for fut in self._futures.get(task_id, ()):
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        for futures in self._futures.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    async def aclose(self) -> None:
        await self.subscription.aclose()
        self._wake_all()
