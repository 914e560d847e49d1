"""One pub/sub subscription kept alive in the background: the task handles' waiters and the workers'
cancel watch each hold one (one connection per :class:`TaskHandles` or :class:`CancelWatch`).

``on_message`` gets each message's data as text. ``on_connected`` is called whenever the subscription is
confirmed by Redis (the ``subscribe`` reply): at first, and after every reconnect, redis-py's own (it
resubscribes by itself) or this loop's (after an error, every ``retry`` seconds). Messages published
while the subscription was down are lost: ``on_connected`` is where a holder reads what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sluice.redis_client import AnyRedis
from sluice.resilience.clock import Clock

from ._codec import text
from ._timing import until_set

__all__ = ["Subscription"]


class Subscription:
    def __init__(
        self,
        redis: AnyRedis,
        channel: str,
        *,
        on_message: Callable[[str], None],
        on_connected: Callable[[], None],
        clock: Clock,
        logger: logging.Logger,
        what: str,
        retry: float = 1.0,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._on_connected = on_connected
        self._clock = clock
        self._log = logger
        self._what = what
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()  # the first attempt to subscribe succeeded or failed
        self.live = False
        self.connects = 0  # confirmed subscriptions (1 + reconnects)
        self.failures = 0
        self.messages = 0

    async def start(self, within: float) -> None:
        """Start the loop (once) and wait, at most ``within`` seconds, for its first attempt to end."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sluice {self._what}")
        await until_set(self._clock, within, self._tried)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        self.live = False
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = text(message.get("type"))
                    if kind == "message":
                        self.messages += 1
                        self._on_message(text(message["data"]))
                    elif kind == "subscribe":
                        self._up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis unreachable (or gone mid-read): retried every `retry` s
                self._down(exc)
            finally:
                self.live = False
                # typed through a variable: redis-py 8 annotates aclose(), earlier releases did not
                close: Callable[[], Awaitable[None]] = pubsub.aclose
                with contextlib.suppress(Exception):
                    await close()
            await self._clock.sleep(self._retry)

    def _up(self) -> None:
        if self.failures and not self.live:
            self._log.warning("%s: subscribed to %s again", self._what, self._channel)
        self.live = True
        self.connects += 1
        self._tried.set()
        self._on_connected()

    def _down(self, exc: BaseException) -> None:
        if self.live or not self.failures:
            self._log.warning("%s: subscription to %s lost, retrying: %r", self._what, self._channel, exc)
        self.live = False
        self.failures += 1
        self._tried.set()
