""":class:`CancelWatch`: a worker's local view of the live cancels, so a check costs no Redis round trip.

``start`` subscribes to ``<prefix>:cancel`` and loads the cancel set (``<prefix>:cancels``, id ->
expiry) and the rules (``<prefix>:cancel-rules``, task name -> published-before). After that the view is
fed by the channel (an id is added at once; ``rule:<task>`` triggers a reload) and reloaded after every
reconnect of the subscription (cancels made while it was down) and every ``resync`` seconds.
:meth:`is_cancelled` is dict lookups and a clock read, nothing else: tracked and untracked tasks alike
pay no Redis call for it. Expired cancels and rules stop counting at their expiry, and drop out of the
view at the next reload.

Redis down: ``start`` does not fail (the worker runs); the view keeps what it had (empty if it never
loaded), and the loops retry every second until Redis answers again, then reload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable

from sluice._closing import AsyncClosing
from sluice.errors import ConfigError
from sluice.redis_client import AnyRedis
from sluice.resilience._scripts import _UNREACHABLE
from sluice.resilience.clock import SYSTEM, Clock

from ._codec import text
from ._keys import HandleKeys
from ._subscription import Subscription
from ._timing import until_set

__all__ = ["CancelWatch"]

_log = logging.getLogger("sluice.handles")
_RULE = "rule:"


class CancelWatch(AsyncClosing):
    def __init__(
        self,
        redis: AnyRedis,
        prefix: str = "sluice",
        *,
        clock: Clock = SYSTEM,
        resync: float = 30.0,
        logger: logging.Logger | None = None,
        timeout: float = 0.5,
        retry: float = 1.0,
    ) -> None:
        if not resync > 0 or not timeout > 0 or not retry > 0:
            raise ConfigError("resync, timeout and retry must be positive")
        self.keys = HandleKeys(prefix)
        self._redis = redis
        self._clock = clock
        self._resync = resync
        self._timeout = timeout
        self._retry = retry
        self._log = logger or _log
        self._ids: dict[str, float] = {}  # id -> expiry (ms); inf until a reload reads its expiry
        self._rules: dict[str, tuple[int, float]] = {}  # task -> (published before ms, expiry ms)
        self._heard: dict[str, float] = {}  # ids heard while a reload was on the wire
        self._callbacks: list[Callable[[str], None]] = []
        self._rule_heard = False  # a rule arrived: once loaded, the callbacks check what runs against it
        self._wanted = asyncio.Event()  # a reload is wanted now
        self._loaded = asyncio.Event()  # the first reload was tried
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.loads = 0
        self.load_failures = 0
        self._sub = Subscription(
            redis,
            self.keys.cancel_channel,
            on_message=self._message,
            on_connected=self._wanted.set,
            clock=clock,
            logger=self._log,
            what="CancelWatch",
            retry=retry,
        )

    @property
    def live(self) -> bool:
        """The subscription is up (cancels arrive as they are made)."""
        return self._sub.live

    @property
    def size(self) -> int:
        """Cancels and rules held."""
        return len(self._ids) + len(self._rules)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_id)`` whenever a cancel of an id arrives (to cancel a running handler)."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Subscribe and load; returns once both were tried (at most about ``2 x timeout``), even if Redis
        is down (then the view starts empty and fills once Redis answers)."""
        if self._task is not None:
            return
        await self._sub.start(self._timeout)
        self._wanted.set()
        self._task = asyncio.get_running_loop().create_task(self._reloader(), name="sluice CancelWatch")
        await until_set(self._clock, 2 * self._timeout, self._loaded)

    def is_cancelled(self, task_id: str, task: str, published_ms: int | None) -> bool:
        """Whether a live cancel covers this task: its id, or a rule on its name published before."""
        ids = self._ids
        if ids:
            expiry = ids.get(task_id)
            if expiry is not None and expiry > self._clock.time() * 1000:
                return True
        rules = self._rules
        if rules and published_ms is not None:
            rule = rules.get(task)
            if rule is not None and published_ms < rule[0] and rule[1] > self._clock.time() * 1000:
                return True
        return False

    def _message(self, data: str) -> None:
        if data.startswith(_RULE):
            self._rule_heard = True
            self._wanted.set()
            return
        self._ids[data] = math.inf
        self._heard[data] = math.inf
        self._notify(data)

    def _notify(self, data: str) -> None:
        """Call the callbacks with ``data`` (an id; ``""`` after a rule loaded: check every running task)."""
        for callback in self._callbacks:
            try:
                callback(data)
            except Exception:  # a callback's bug must not stop the cancels arriving
                self._log.exception("CancelWatch: on_cancel callback failed for %s", data)

    async def _reloader(self) -> None:
        while True:
            wait = self._resync
            try:
                await self._reload()
            except _UNREACHABLE as exc:
                self.load_failures += 1
                if not self._failing:
                    self._log.warning("CancelWatch: cannot load the cancels, retrying: %r", exc)
                self._failing = True
                wait = self._retry
            self._loaded.set()
            await until_set(self._clock, wait, self._wanted)

    async def _reload(self) -> None:
        self._wanted.clear()
        self._heard = {}
        now = self._clock.time() * 1000
        keys = self.keys
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(keys.cancels, now, "+inf", withscores=True)
                pipe.hgetall(keys.cancel_rules)
                cancels, rules = await pipe.execute()
        ids = {text(member): float(score) for member, score in cancels}
        ids.update(self._heard)
        self._ids = ids
        loaded: dict[str, tuple[int, float]] = {}
        for name, raw in rules.items():
            try:
                rule = json.loads(text(raw))
                before, expiry = int(rule["before_ms"]), float(rule["expires_ms"])
            except (ValueError, KeyError, TypeError):
                continue
            if expiry > now:
                loaded[text(name)] = (before, expiry)
        self._rules = loaded
        self.loads += 1
        if self._rule_heard:
            self._rule_heard = False
            self._notify("")
        if self._failing:
            self._log.warning("CancelWatch: cancels loaded again (%d ids, %d rules)", len(ids), len(loaded))
        self._failing = False

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        await self._sub.aclose()
