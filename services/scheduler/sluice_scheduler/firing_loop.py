"""The fire loop: while this instance leads, every ``tick`` seconds read the schedules, plan each one
(:func:`sluice.schedules.plan`: catch-up, backlog, jitter) and fire what is due.

One fire is: claim the occurrence in Redis (refused unless the lease still carries our fencing token, and
unless the occurrence is still unfired: ``CLAIM`` in :mod:`sluice.schedules._lua`), publish its task with the
deterministic id ``{schedule}:{occurrence ms}`` and wait for the broker's confirm, then record it (the
cursor moves). A publish that is not confirmed leaves the occurrence claimed and unrecorded: it is sent
again on the next pass, with the same id, until the broker confirms it (an outage delays fires, never drops
them). A confirmed publish whose record could not be written (Redis down) is remembered here and recorded
first on the next pass, never published again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sluice.connection import BROKER_ERRORS
from sluice.errors import BrokerError, ProtocolError, PublishReturned, UnknownQueue
from sluice.protocol import TaskMessage
from sluice.resilience.clock import SYSTEM, Clock
from sluice.schedules import (
    Entry,
    Lease,
    Plan,
    Schedule,
    ScheduleError,
    ScheduleStore,
    StoreUnavailable,
    fire_message,
    plan,
)

from .leadership import Leadership, sleep_or_stop
from .metrics import SchedulerMetrics

__all__ = ["FireLoop"]


#: a publish that failed this way was not confirmed: it is sent again on a later pass
_NOT_CONFIRMED: tuple[type[BaseException], ...] = (BrokerError, ProtocolError, TimeoutError, *BROKER_ERRORS)


class _Fenced(ScheduleError):
    """A claim was refused: another scheduler holds the lease."""


class _ThisSchedule(ScheduleError):
    """A fire refused for what this schedule asks (an unknown queue, an unroutable or too large task): the
    other schedules go on; this one is tried again on the next pass."""


class _BrokerDown(ScheduleError):
    """A publish was not confirmed: stop this pass."""


@dataclass(slots=True)
class _Unrecorded:
    task_id: str
    fired_at: int
    caught_up: bool
    skipped: int


@dataclass(slots=True)
class FireLoop:
    """Fires due occurrences while ``leadership`` holds the lease."""

    store: ScheduleStore
    leadership: Leadership
    #: publishes one task and returns once the broker confirmed it (``Publisher.publish``)
    publish: Callable[[TaskMessage], Awaitable[object]]
    task_queues: Mapping[str, str] = field(default_factory=dict)
    default_queue: str = "default"
    tick: float = 0.25
    retry_after: float = 1.0
    clock: Clock = SYSTEM
    metrics: SchedulerMetrics = field(default_factory=SchedulerMetrics)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sluice.scheduler"))
    _unrecorded: dict[tuple[str, int], _Unrecorded] = field(default_factory=dict)
    #: the code-declared schedules, synced again at the start of each term (``None``: this replica declares
    #: none and leaves the code-declared ones as they are)
    declared: Sequence[Schedule] | None = None
    _synced_term: int = -1
    _failing: bool = False
    _store_down: bool = False
    _refused: dict[str, str] = field(default_factory=dict)  # schedule -> why its last fire was refused

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self.tick
            lease = self.leadership.held()
            if lease is not None:
                wait = await self.fire_pass(lease)
            if await sleep_or_stop(self.clock, stop, min(wait, self.tick)):
                return

    async def fire_pass(self, lease: Lease) -> float:
        """One pass over every schedule; answers the seconds until the next pass is needed."""
        try:
            await self._record_remembered()
            if self.declared is not None and self._synced_term != self.leadership.term_start_ms:
                report = await self.store.sync(self.declared)  # a new term: Redis may have lost them
                self._synced_term = self.leadership.term_start_ms
                if report.added or report.updated or report.removed:
                    self.log.info("declared schedules synced at the start of the term: %s", report)
            entries = await self.store.entries()
        except StoreUnavailable as e:
            self._store_trouble("cannot read the schedules", e)
            return self.retry_after
        self._store_down = False
        self.metrics.schedules.set(len(entries))
        wait = self.tick
        for entry in entries:
            if entry.paused or entry.state.cursor is None:
                continue
            now = self._now_ms()
            p = plan(entry.schedule, entry.state.cursor, now, self.leadership.term_start_ms)
            try:
                await self._apply(lease, entry, p)
            except _Fenced:
                self.leadership.drop("another scheduler holds the lease (a claim was fenced)")
                return self.tick
            except _BrokerDown:
                return self.retry_after
            except _ThisSchedule:
                continue
            except StoreUnavailable as e:
                self._store_trouble("lost Redis while firing", e)
                return self.retry_after
            if p.next_due is not None:
                wait = min(wait, max(0.0, (p.next_due - self._now_ms()) / 1000))
        return wait

    def _store_trouble(self, what: str, e: Exception) -> None:
        """Logged once per outage (the lease keeper says when Redis is back)."""
        if not self._store_down:
            self._store_down = True
            self.log.warning("%s (%s); retrying", what, e)

    async def _record_remembered(self) -> None:
        for (name, occ), done in list(self._unrecorded.items()):
            await self.store.record(
                name, occ, done.task_id, done.fired_at, caught_up=done.caught_up, skipped=done.skipped
            )
            del self._unrecorded[(name, occ)]

    async def _apply(self, lease: Lease, entry: Entry, p: Plan) -> None:
        s = entry.schedule
        if p.skip_to is not None and not p.fire:
            moved = await self.store.skip(lease, s.name, p.skip_to, p.skipped)
            if moved is None:
                raise _Fenced
            if moved and p.skipped:
                self.metrics.skipped.labels(s.name).inc(p.skipped)
                self.log.info("%s: skipped %d missed occurrence(s) (catch-up skip)", s.name, p.skipped)
            return
        for i, (occ, caught_up) in enumerate(p.fire):
            if self.leadership.held() is None:  # woke up past the lease (a stopped process): renew first
                raise _Fenced
            claim = await self.store.claim(lease, s.name, occ)
            if claim == "fenced":
                raise _Fenced
            if claim == "paused":
                return
            if claim == "fired":
                continue
            if claim == "reclaimed":
                self.log.warning(
                    "%s: occurrence %d was claimed by a leader that never recorded it: sending it again with "
                    "the same task id",
                    s.name,
                    occ,
                )
            if self.leadership.held() is None:
                raise _Fenced
            await self._fire(entry, occ, caught_up, p.skipped if i == 0 else 0)
            if i == 0 and p.skipped:
                self.metrics.skipped.labels(s.name).inc(p.skipped)
                self.log.info(
                    "%s: %d missed occurrence(s) not fired (catch-up %s)", s.name, p.skipped, s.catch_up
                )

    async def _fire(self, entry: Entry, occ: int, caught_up: bool, skipped: int) -> None:
        s = entry.schedule
        queue = s.queue or self.task_queues.get(s.task) or self.default_queue
        msg = fire_message(s, occ, queue, now_ms=self._now_ms())
        try:
            await self.publish(msg)
        except (UnknownQueue, PublishReturned, ProtocolError) as e:
            self.metrics.publish_failures.inc()
            if self._refused.get(s.name) != str(e):
                self._refused[s.name] = str(e)
                self.log.error("%s: fire of %d refused (%s): tried again each pass", s.name, occ, e)
            raise _ThisSchedule from None
        except _NOT_CONFIRMED as e:
            self.metrics.publish_failures.inc()
            if not self._failing:
                self._failing = True
                self.log.warning("%s: fire of %d not confirmed (%s): sending it again", s.name, occ, e)
            raise _BrokerDown from None
        self._refused.pop(s.name, None)
        if self._failing:
            self._failing = False
            self.log.info("the broker confirms fires again")
        fired_at = self._now_ms()
        self.metrics.fires.labels(s.name).inc()
        self.metrics.lag.observe(max(0.0, (fired_at - occ) / 1000))
        if caught_up:
            self.metrics.caught_up.labels(s.name).inc()
        try:
            await self.store.record(s.name, occ, msg.id, fired_at, caught_up=caught_up, skipped=skipped)
        except StoreUnavailable:
            self._unrecorded[(s.name, occ)] = _Unrecorded(msg.id, fired_at, caught_up, skipped)
            raise
        self.log.debug("%s: fired %s", s.name, msg.id)
