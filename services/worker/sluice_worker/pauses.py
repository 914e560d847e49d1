"""Pausing a queue's consumer while every task it carries is blocked (issue 14: stop consuming what cannot run).

Without this, a queue whose breaker is open sends every message through the delay tiers and back, again
and again, until the breaker closes. :class:`Pauses` (one per worker, kept across sessions) learns the
blocks from the outcomes the session carries out, and the session (:mod:`sluice_worker.session`)
cancels the queue's consumer (``basic.cancel``) while the block holds and consumes again after it.

- **Which tasks belong to a queue**: the registry's tasks declared on it (a consumed sub-queue
  ``Q.<part>``, fair share's, belongs to ``Q``), plus any task of the registry seen delivered from it
  (so the demo tasks every worker loads count on ``default`` once one of them is delivered there).
  A queue none of whose tasks this worker knows is never paused.
- **Blocked** means the block does not depend on the payload: a ``breaker_open`` deferral (a task's
  breaker is one name for all its deliveries), or a ``throttled`` deferral of a task whose limit has no
  per-tenant ``key`` (declared or set with ``sluice limits set``): its freeze is the task's key or a
  scope every delivery is decided against. A per-tenant freeze never pauses. Any other outcome of the
  task (it ran, was rate limited, failed) ends its block. **All blocked**: every task of the queue is.
- **How long**: until the first block ends (the breaker's remaining open time, the freeze's end),
  re-read every :data:`PAUSE_RECHECK` seconds: a breaker found closed, or a freeze of the task's key
  found thawed, resumes at once; a scope's freeze (its name is the rate-limit step's) holds for the
  deferral's delay, at most 16 s (the step's ``FREEZE_RECHECK``), then the queue resumes and re-learns.
- **Half-open**: when the open time ends the consumer resumes; the first deliveries take the trials,
  the others are refused by the breaker until the round ends (the queue pauses again), and a breaker
  closed by its trials (here or on another worker) resumes the queue at the next re-read.
- Deliveries already prefetched when the consumer is cancelled are carried out as before (deferred).
  A new session (a reconnect) starts a queue paused if its block still holds. Redis unreadable at a
  re-read: the queue resumes (the pipeline decides every delivery as without pausing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sluice.protocol import H_TASK
from sluice.resilience.clock import SYSTEM, Clock
from sluice.tasks import Registry, Task
from sluice.telemetry import PAUSE_REASONS, NullTelemetry, Telemetry
from sluice_worker._pause_reads import BlockReader
from sluice_worker.options import DEMO_MODULE
from sluice_worker.outcome import BREAKER_OPEN, THROTTLED, Deferred, Outcome

__all__ = ["PAUSE_REASONS", "PAUSE_RECHECK", "Block", "Pauses", "base_queue"]

log = logging.getLogger("sluice.worker")

#: seconds at most between two reads of a paused queue's blocks (a breaker closed early, a thaw)
PAUSE_RECHECK: Final = 2.0
_MAX_SEEN: Final = 100  # tasks of other queues seen on one queue, remembered


@dataclass(frozen=True, slots=True)
class Block:
    """One task cannot run until ``until`` (the worker's monotonic clock) because of ``reason``;
    ``freeze``: the freeze read for it at re-reads (``None``: not known here, a scope)."""

    reason: str
    until: float
    freeze: str | None = None


def base_queue(queue: str, declared: set[str]) -> str:
    """The declared queue ``queue`` belongs to: itself, or ``Q`` for a sub-queue ``Q.<part>``."""
    if queue in declared:
        return queue
    heads = [q for q in declared if queue.startswith(q + ".")]
    return max(heads, key=len) if heads else queue


class Pauses:
    """What blocks each task, and which consumed queues are paused (see the module doc)."""

    def __init__(
        self,
        registry: Registry,
        queues: Sequence[str],
        reader: BlockReader,
        *,
        clock: Clock = SYSTEM,
        telemetry: Telemetry | NullTelemetry | None = None,
        recheck: float = PAUSE_RECHECK,
    ) -> None:
        self._registry = registry
        self._reader = reader
        self.clock = clock
        self.recheck = recheck
        self._telemetry = telemetry or NullTelemetry()
        declared = registry.queues()
        # the always-loaded demo tasks count once one of them is delivered from the queue
        self._tasks: dict[str, set[str]] = {
            q: {
                t.name
                for t in registry.values()
                if t.queue == base_queue(q, declared) and t.fn.__module__ != DEMO_MODULE
            }
            for q in queues
        }
        self._blocks: dict[str, Block] = {}
        self.paused: dict[str, str] = {}  # queue -> the reason it is paused for
        self._due: dict[str, float] = {}  # paused queue -> its next re-read
        self.changed = asyncio.Event()  # a queue may have to pause, or a paused one resume
        for q in queues:
            self._telemetry.gauge(f"consumers_paused:{q}", self._reads_paused(q))

    def _reads_paused(self, queue: str) -> Callable[[], float]:
        return lambda: 1.0 if queue in self.paused else 0.0

    # ---- learning (every delivery's outcome; a dict lookup unless the outcome is a blocking deferral)
    def observe(self, queue: str, headers: Mapping[str, object] | None, outcome: Outcome) -> None:
        name = headers.get(H_TASK) if headers else None
        if not isinstance(name, str):
            return
        if type(outcome) is Deferred and outcome.reason in PAUSE_REASONS:
            self._deferred(queue, name, outcome)
        elif self._blocks and self._blocks.pop(name, None) is not None and self.paused:
            self.changed.set()  # it ran (a delivery prefetched before the pause): re-read now

    def _deferred(self, queue: str, name: str, out: Deferred) -> None:
        task = self._registry.get(name)
        if task is None or not _independent(task, out.reason):
            self._blocks.pop(name, None)
            return
        tasks = self._tasks.get(queue)
        if tasks is not None and name not in tasks and len(tasks) < len(self._registry) + _MAX_SEEN:
            tasks.add(name)
        until = self.clock.monotonic() + out.delay
        old = self._blocks.get(name)
        if old is None or old.reason != out.reason:
            self._blocks[name] = Block(out.reason, until)
        elif until > old.until:
            self._blocks[name] = Block(out.reason, until, old.freeze)
        if queue not in self.paused and self.blocked(queue) is not None:
            self.changed.set()

    def blocked(self, queue: str) -> Block | None:
        """The block of ``queue``'s task that ends first when every one of them is blocked, else None."""
        names = self._tasks.get(queue)
        if not names:
            return None
        now = self.clock.monotonic()
        first: Block | None = None
        for n in names:
            b = self._blocks.get(n)
            if b is None or b.until <= now:
                return None
            if first is None or b.until < first.until:
                first = b
        return first

    # ---- deciding (the session's pause loop)
    async def confirm(self, queue: str) -> Block | None:
        """Before pausing ``queue``: its throttled tasks' limits read again (a per-tenant override ends
        the block) and their freezes looked up; the queue's block if it still holds."""
        for name in list(self._tasks.get(queue, ())):
            b = self._blocks.get(name)
            if b is not None and b.reason == THROTTLED and b.freeze is None:
                try:
                    got = await self._throttled(name, b, first=True)
                except Exception as e:  # Redis away: no pause (the pipeline decides as before)
                    log.debug("queue %s: cannot read the block of %s: %s", queue, name, e)
                    got = None
                if got is None:
                    self._blocks.pop(name, None)
                else:
                    self._blocks[name] = got
        return self.blocked(queue)

    async def reread(self, queue: str) -> Block | None:
        """A paused queue's blocks read again from Redis: its block if it still holds, else None."""
        now = self.clock.monotonic()
        for name in list(self._tasks.get(queue, ())):
            b = self._blocks.get(name)
            if b is None:
                return None
            try:
                if b.reason == BREAKER_OPEN:
                    held = b.until > now and await self._reader.breaker_open(self._registry[name])
                    b = b if held else None
                else:
                    b = await self._throttled(name, b, first=False)
            except Exception as e:  # Redis away: resume, the pipeline decides as without pausing
                log.warning("queue %s: cannot read the block of %s (%s): resuming", queue, name, e)
                b = None
            if b is None:
                self._blocks.pop(name, None)
                return None
            self._blocks[name] = b
        return self.blocked(queue)

    async def _throttled(self, name: str, b: Block, *, first: bool) -> Block | None:
        now = self.clock.monotonic()
        if first and await self._reader.keyed(self._registry[name]):
            return None  # a per-tenant limit set at run time: not this task's block
        if b.freeze is None and not first:
            return b if b.until > now else None  # a scope: its deferral's delay, then re-learn
        left = await self._reader.frozen_for(name)
        if left is None:
            return None if b.freeze is not None else b  # thawed / a scope, not the task's key
        return Block(THROTTLED, now + left, name)

    # ---- the state the session keeps here (across sessions) and the telemetry
    def due(self, queue: str) -> float:
        return self._due.get(queue, 0.0)

    def hold(self, queue: str, block: Block) -> None:
        """``queue`` stays paused (or starts so): its next re-read is due."""
        now = self.clock.monotonic()
        self._due[queue] = min(block.until, now + self.recheck)
        if queue not in self.paused:
            self.paused[queue] = block.reason
            self._telemetry.consumer_paused(queue, block.reason)

    def release(self, queue: str) -> None:
        self.paused.pop(queue, None)
        self._due.pop(queue, None)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    async def aclose(self) -> None:
        await self._reader.aclose()


def _independent(task: Task, reason: str) -> bool:
    """Can ``reason`` block every delivery of ``task`` alike (no per-tenant key decides it)?"""
    if reason == BREAKER_OPEN:
        return task.policy.breaker is not None
    declared = task.policy.rate_limit
    return declared is None or declared.key is None
