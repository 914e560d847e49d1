"""Publishing with task handles: tracking (``track``) and unique enqueue (``unique_key``).

A task published with these options is a :class:`HandledMessage`: a :class:`~sluice.protocol.TaskMessage`
whose headers also carry ``x-sluice-track`` and ``x-sluice-unique-key``/``-release`` (docs/protocol.md). A
plain task is never one, and costs nothing here: no Redis call, not even a client.

Unique enqueue is decided in Redis *before* the publish: :meth:`HandleOps.claim` sets
``<prefix>:unique:{<key>}`` to the new task's id unless it holds another id (one atomic ``SET NX PX``
in :meth:`sluice.handles.TaskHandles.claim_unique`); then it is a duplicate and is not published. A
publish that then fails (not confirmed, refused, the caller gone) releases the claim, but only while it
still holds this task's id. Cost: one round trip per unique task before its publish, one more only if
the publish fails. A process killed between the claim and the publish leaves the key taken for
``unique_for`` seconds. A publish that timed out may still reach the queue: released, the key lets a
second copy in (an idempotency key absorbs that).

Tracked (and unique) tasks are marked ``queued`` once the broker confirmed them
(:meth:`~sluice.handles.TaskHandles.mark_queued`, one pipelined round trip per :data:`MARK_BATCH`
tasks). A worker that starts the task first writes a higher rank, so a late mark never moves it back.
Marking fails open: the task is published whatever Redis says (logged once per outage).

:class:`Enqueuer` is the Python door: a :class:`~sluice.publisher.Publisher` and a
:class:`~sluice.handles.TaskHandles` together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

from sluice._closing import AsyncClosing
from sluice.errors import ConfigError
from sluice.handles import QueuedInfo, TaskHandles, TrackingUnavailable, UniqueRelease
from sluice.protocol import H_TRACK, H_UNIQUE_KEY, H_UNIQUE_RELEASE, TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings

__all__ = [
    "DEFAULT_UNIQUE_FOR",
    "MARK_BATCH",
    "Enqueued",
    "Enqueuer",
    "HandleOps",
    "HandledMessage",
    "UniqueRelease",
    "handled",
]

log = logging.getLogger("sluice.producer")

RELEASES: tuple[str, ...] = get_args(UniqueRelease)
DEFAULT_UNIQUE_FOR = 86400.0  # seconds a unique key is held at most (also the bound after a crash)
MAX_UNIQUE_FOR = 30 * 86400.0
UNIQUE_KEY_MAX = 512
MARK_BATCH = 500  # tasks per mark_queued round trip


@dataclass(frozen=True, slots=True)
class HandledMessage(TaskMessage):
    """A task published with handle options; its headers carry them (see docs/protocol.md)."""

    track: bool = False
    unique_key: str | None = None
    unique_for: float = DEFAULT_UNIQUE_FOR
    unique_release: UniqueRelease = "end"

    def headers(self) -> dict[str, Any]:
        h = TaskMessage.headers(self)  # (zero-argument super() does not work in a slots dataclass)
        if self.track or self.unique_key is not None:
            h[H_TRACK] = 1
        if self.unique_key is not None:
            h[H_UNIQUE_KEY] = self.unique_key
            h[H_UNIQUE_RELEASE] = self.unique_release
        return h


def handled(
    msg: TaskMessage,
    *,
    track: bool = False,
    unique_key: str | None = None,
    unique_for: float | None = None,
    unique_release: str = "end",
) -> TaskMessage:
    """``msg`` with these options (checked: :class:`ConfigError`); ``msg`` itself when none is set.

    A unique task is tracked too: the duplicate's caller gets an id it can follow.
    """
    if unique_key is None:
        if unique_for is not None:
            raise ConfigError("unique_for needs a unique_key")
        if unique_release != "end":
            raise ConfigError("unique_release needs a unique_key")
    elif not 0 < len(unique_key) <= UNIQUE_KEY_MAX:
        raise ConfigError(f"unique_key must be 1-{UNIQUE_KEY_MAX} characters")
    if unique_for is not None and not (0 < unique_for <= MAX_UNIQUE_FOR and math.isfinite(unique_for)):
        raise ConfigError(f"unique_for {unique_for!r}: must be more than 0 and at most 30 days (seconds)")
    if unique_release not in RELEASES:
        raise ConfigError(f"unique_release {unique_release!r}: use one of {', '.join(RELEASES)}")
    if not track and unique_key is None:
        return msg
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(TaskMessage)}
    return HandledMessage(
        **fields,
        track=True,
        unique_key=unique_key,
        unique_for=DEFAULT_UNIQUE_FOR if unique_for is None else unique_for,
        unique_release=cast(UniqueRelease, unique_release),
    )


class HandleOps(AsyncClosing):
    """What publishing does around :class:`HandledMessage` tasks: claims, releases, queued marks.

    ``handles``: the :class:`TaskHandles` to use, or None to make one (on its own Redis client, from
    ``settings.redis_url``) the first time a task needs it. Plain tasks are passed over at no cost.
    """

    def __init__(self, settings: Settings, handles: TaskHandles | None = None) -> None:
        self._settings = settings
        self._handles = handles
        self._own: Any = None  # the Redis client this object made, closed by aclose
        self._marks: list[QueuedInfo] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._warned = False

    @property
    def handles(self) -> TaskHandles:
        if self._handles is None:
            from sluice.redis_client import redis_client

            self._own = redis_client(self._settings, socket_timeout=5.0, socket_connect_timeout=3.0)
            self._handles = TaskHandles(self._own, self._settings.prefix, ttl=self._settings.track_ttl)
        return self._handles

    async def claim(self, msg: TaskMessage) -> str | None:
        """None: publish ``msg`` (its key is now held for it, or it has none); else the id of the task
        that holds its unique key (do not publish). Raises :class:`TrackingUnavailable`."""
        if not isinstance(msg, HandledMessage) or msg.unique_key is None:
            return None
        try:
            existing = await self.handles.claim_unique(msg.unique_key, msg.id, msg.unique_for)
        except TrackingUnavailable as e:
            raise TrackingUnavailable(f"unique key {msg.unique_key!r} cannot be decided ({e})") from None
        return None if existing is None or existing == msg.id else existing

    async def release(self, msg: TaskMessage) -> None:
        """The publish of ``msg`` failed: free its key (if it still holds this id). Never raises
        (a Redis failure here leaves the key taken until its ttl: logged)."""
        if not isinstance(msg, HandledMessage) or msg.unique_key is None:
            return
        try:
            await asyncio.shield(self.handles.release_unique(msg.unique_key, msg.id))
        except TrackingUnavailable as e:
            log.warning(
                "unique key %r of unpublished task %s not released (%s): taken until its ttl (%gs)",
                msg.unique_key,
                msg.id,
                e,
                msg.unique_for,
            )

    def confirmed(self, msg: TaskMessage) -> None:
        """The broker confirmed ``msg``: mark it queued (batched; :meth:`flush` sends the rest)."""
        if not isinstance(msg, HandledMessage):
            return
        self._marks.append(
            QueuedInfo(
                msg.id,
                msg.task,
                msg.queue,
                msg.created_at_ms,
                unique_key=msg.unique_key,
                unique_release=msg.unique_release,
            )
        )
        if len(self._marks) >= MARK_BATCH:
            batch, self._marks = self._marks, []
            self._spawn(self._mark(batch))

    def failed(self, msg: TaskMessage) -> None:
        """:meth:`release` in the background (from a synchronous callback); :meth:`flush` awaits it."""
        if isinstance(msg, HandledMessage) and msg.unique_key is not None:
            self._spawn(self.release(msg))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Every queued mark written (or given up: fail open)."""
        batch, self._marks = self._marks, []
        if batch:
            await self._mark(batch)
        while self._pending:
            await asyncio.gather(*self._pending)

    async def marked(self, messages: Sequence[TaskMessage]) -> None:
        """:meth:`confirmed` for each, then :meth:`flush`."""
        for msg in messages:
            self.confirmed(msg)
        await self.flush()

    async def _mark(self, batch: list[QueuedInfo]) -> None:
        try:
            await self.handles.mark_queued(batch)
            self._warned = False
        except TrackingUnavailable as e:
            if not self._warned:  # once per outage
                self._warned = True
                log.warning("tracking: %d published tasks not marked queued: %s", len(batch), e)

    async def aclose(self) -> None:
        try:
            await self.flush()
        finally:
            if self._own is not None:  # the handles and client this object made
                own, self._own = self._own, None
                if self._handles is not None:
                    await self._handles.aclose()
                await own.aclose()


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :meth:`Enqueuer.publish` did: ``id`` the task's id; ``duplicate_of`` the id of the task
    already holding the unique key (then nothing was published and ``id`` is that id)."""

    id: str
    duplicate_of: str | None = None


class Enqueuer(AsyncClosing):
    """Publish tasks with handle options, from Python::

    async with Publisher(settings) as pub, Enqueuer(pub, handles) as enq:
        out = await enq.publish(TaskMessage("report.build", {...}), unique_key="report-42")
        status = await handles.wait(out.id, timeout=30)
    """

    def __init__(self, publisher: Publisher, handles: TaskHandles | None = None) -> None:
        self.publisher = publisher
        self.ops = HandleOps(publisher.settings, handles)

    async def publish(
        self,
        msg: TaskMessage,
        *,
        track: bool = False,
        unique_key: str | None = None,
        unique_for: float | None = None,
        unique_release: str = "end",
    ) -> Enqueued:
        """Publish ``msg`` (confirmed), unless another task holds ``unique_key``. Raises what
        :meth:`Publisher.publish` raises (the claim released first) and :class:`TrackingUnavailable`
        when a unique key cannot be decided (nothing published)."""
        msg = handled(
            msg, track=track, unique_key=unique_key, unique_for=unique_for, unique_release=unique_release
        )
        existing = await self.ops.claim(msg)
        if existing is not None:
            return Enqueued(existing, duplicate_of=existing)
        try:
            await self.publisher.publish(msg)
        except BaseException:
            await self.ops.release(msg)
            raise
        await self.ops.marked([msg])
        return Enqueued(msg.id)

    async def aclose(self) -> None:
        await self.ops.aclose()
