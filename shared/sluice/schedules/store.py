"""The run-time schedule store in Redis, shared by every scheduler replica, ``sluice schedule`` and the
producer's ``/v1/schedules``; and the leader lease with its fencing token.

Keys (``p`` is ``settings.prefix``; ``{sched}`` is one Redis Cluster hash tag for all of them):

* ``p:{sched}:defs``: hash, schedule name -> its definition (JSON: the schedule, ``origin`` = ``code`` or
  ``runtime``, ``updated_ms``);
* ``p:{sched}:state:<name>``: hash, ``cursor`` (the last fired occurrence, ms; a new schedule's creation
  time), ``sig`` (its timing), ``pending``/``pending_by`` (an occurrence claimed and not yet confirmed),
  ``paused``, ``last_occurrence``, ``last_task``, ``last_fired_at``, ``last_run_task``, ``last_run_at``,
  and the fleet-wide counters ``fires``, ``caught_up`` (fires of missed occurrences, by the catch-up policy)
  and ``skipped`` (missed occurrences the policy dropped);
* ``p:{sched}:leader``: string ``<instance>|<token>``, expires after the lease; ``p:{sched}:epoch``: the
  fencing token counter (only grows).

Definitions and states are configuration: they have no TTL (the lease has). One round trip per call
(two for :meth:`ScheduleStore.entries`); Redis unreachable raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sluice._closing import AsyncClosing
from sluice.errors import ConfigError
from sluice.redis_client import AnyRedis
from sluice.resilience._scripts import Arg, Call, ScriptRunner
from sluice.resilience.clock import SYSTEM, Clock
from sluice.resilience.errors import BackendUnavailable

from . import _lua
from .errors import StoreUnavailable, UnknownSchedule
from .spec import Schedule, check_name

__all__ = ["Claim", "Entry", "Lease", "ScheduleState", "ScheduleStore", "SyncReport"]

Origin = Literal["code", "runtime"]
Claim = Literal["fenced", "paused", "fired", "claimed", "reclaimed"]
_CLAIMS: dict[int, Claim] = {-1: "fenced", -2: "paused", 0: "fired", 1: "claimed", 2: "reclaimed"}


def _text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    t = _text(v)
    return int(t) if t is not None and t.lstrip("-").isdigit() else None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    cursor: int | None = None
    paused: bool = False
    pending: int | None = None
    last_occurrence: int | None = None
    last_task: str | None = None
    last_fired_at: int | None = None
    last_run_task: str | None = None
    last_run_at: int | None = None
    fires: int = 0  # occurrences fired and recorded, fleet-wide, since the schedule was stored
    caught_up: int = 0  # of those, missed occurrences fired late by the catch-up policy
    skipped: int = 0  # missed occurrences the catch-up policy dropped (never fired)

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> ScheduleState:
        get = {(_text(k) or ""): v for k, v in h.items()}.get
        return cls(
            cursor=_int(get("cursor")),
            paused=get("paused") is not None,
            pending=_int(get("pending")),
            last_occurrence=_int(get("last_occurrence")),
            last_task=_text(get("last_task")),
            last_fired_at=_int(get("last_fired_at")),
            last_run_task=_text(get("last_run_task")),
            last_run_at=_int(get("last_run_at")),
            fires=_int(get("fires")) or 0,
            caught_up=_int(get("caught_up")) or 0,
            skipped=_int(get("skipped")) or 0,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored schedule, where it came from and its state."""

    schedule: Schedule
    origin: Origin
    state: ScheduleState
    updated_ms: int = 0

    @property
    def paused(self) -> bool:
        return self.state.paused or not self.schedule.enabled


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease as Redis answered ``instance``: the current ``token`` and ``holder``; ``held`` when
    the holder is the instance. :attr:`value` is what a claim presents (refused unless it is the lease's)."""

    instance: str
    token: int
    holder: str | None

    @property
    def held(self) -> bool:
        return self.holder == self.instance

    @property
    def value(self) -> str:
        return f"{self.instance}|{self.token}"


@dataclass(frozen=True, slots=True)
class SyncReport:
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class ScheduleStore(AsyncClosing):
    """Schedules and their states under ``prefix``; ``clock``: where "now" comes from (a new schedule
    starts from it); ``timeout``: the bound of each call."""

    def __init__(
        self, redis: AnyRedis, prefix: str = "sluice", *, clock: Clock = SYSTEM, timeout: float = 2.0
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"key prefix must be non-empty and free of braces: {prefix!r}")
        self.prefix = prefix
        self.defs_key = f"{prefix}:{{sched}}:defs"
        self.leader_key = f"{prefix}:{{sched}}:leader"
        self.epoch_key = f"{prefix}:{{sched}}:epoch"
        self._redis = redis
        self._clock = clock
        self._runner = ScriptRunner(redis, timeout=timeout)

    def state_key(self, name: str) -> str:
        return f"{self.prefix}:{{sched}}:state:{name}"

    def _now(self) -> int:
        return int(self._clock.time() * 1000)

    async def _run(self, call: Call) -> Any:
        try:
            return await self._runner.run(*call)
        except BackendUnavailable as e:
            raise StoreUnavailable(str(e)) from e

    async def _command(self, *args: Any) -> Any:
        try:
            return await self._runner.command(*args)
        except BackendUnavailable as e:
            raise StoreUnavailable(str(e)) from e

    # --- definitions -------------------------------------------------------------------------------

    async def save(self, schedule: Schedule, origin: Origin = "runtime") -> bool:
        """Add or replace a schedule (it must name its task); answers whether it is new. A new schedule, or
        one whose timing changed, counts its occurrences from now."""
        if not schedule.task:
            raise ConfigError("a stored schedule must name its task")
        check_name(schedule.name)
        doc = json.dumps({"schedule": schedule.as_dict(), "origin": origin, "updated_ms": self._now()})
        args: list[Arg] = [schedule.name, doc, schedule.timing, self._now(), "0"]
        return bool(await self._run((_lua.SAVE, [self.defs_key, self.state_key(schedule.name)], args)))

    async def remove(self, name: str) -> bool:
        """Remove a schedule and its state; answers whether it existed."""
        removed = await self._command("HDEL", self.defs_key, name)
        await self._command("DEL", self.state_key(name))
        return bool(removed)

    async def get(self, name: str) -> Entry:
        """One schedule, or :class:`UnknownSchedule`."""
        raw = await self._command("HGET", self.defs_key, name)
        if raw is None:
            raise UnknownSchedule(f"no schedule named {name!r}")
        state = await self._command("HGETALL", self.state_key(name))
        return _entry(raw, state)

    async def entries(self) -> list[Entry]:
        """Every schedule with its state, by name."""
        defs = await self._command("HGETALL", self.defs_key)
        names = sorted((_text(k) or "") for k in defs)
        if not names:
            return []
        replies = await self._run((_lua.STATES, [self.state_key(n) for n in names], []))
        states = [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in replies]
        raw_by_name = {(_text(k) or ""): v for k, v in defs.items()}
        return [_entry(raw_by_name[n], s) for n, s in zip(names, states, strict=True)]

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause (no fire until resumed) or resume (counting from now: what fell due while paused is not
        caught up)."""
        entry = await self.get(name)
        if paused:
            await self._command("HSET", self.state_key(name), "paused", "1")
            return
        await self._command("HDEL", self.state_key(name), "paused")
        s = entry.schedule
        args: list[Arg] = [name, _definition(s, entry.origin, self._now()), s.timing, self._now(), "1"]
        await self._run((_lua.SAVE, [self.defs_key, self.state_key(name)], args))

    async def sync(self, schedules: Iterable[Schedule]) -> SyncReport:
        """Make the code-declared schedules the stored ones of origin ``code``: add or update each; remove
        those of origin ``code`` no longer declared (the ones added at run time stay)."""
        declared = {s.name: s for s in schedules}
        before = {e.schedule.name: e for e in await self.entries()}
        added: list[str] = []
        updated: list[str] = []
        removed: list[str] = []
        for name, s in declared.items():
            old = before.get(name)
            if old is not None and old.origin == "code" and old.schedule == s:
                continue
            (added if await self.save(s, "code") else updated).append(name)
        for name, e in before.items():
            if e.origin == "code" and name not in declared:
                await self.remove(name)
                removed.append(name)
        return SyncReport(tuple(added), tuple(updated), tuple(removed))

    async def record_run(self, name: str, task_id: str, at_ms: int) -> None:
        """A manual run (``sluice schedule run``) was confirmed."""
        await self._command("HSET", self.state_key(name), "last_run_task", task_id, "last_run_at", at_ms)

    # --- the fire protocol -------------------------------------------------------------------------

    async def claim(self, lease: Lease, name: str, occurrence_ms: int) -> Claim:
        """Take one occurrence to fire it: refused if ``lease`` is no longer the leader's (fenced), the
        schedule is paused or removed, or the occurrence was fired already."""
        keys = [self.leader_key, self.state_key(name)]
        return _CLAIMS[int(await self._run((_lua.CLAIM, keys, [lease.value, occurrence_ms])))]

    async def record(
        self,
        name: str,
        occurrence_ms: int,
        task_id: str,
        fired_at_ms: int,
        *,
        caught_up: bool = False,
        skipped: int = 0,
    ) -> bool:
        """The occurrence's publish was confirmed: move the cursor to it, counting the fire (as caught up,
        when the catch-up policy fired a missed occurrence) and the ``skipped`` occurrences it stands for."""
        args: list[Arg] = [occurrence_ms, task_id, fired_at_ms, "1" if caught_up else "0", skipped]
        return bool(await self._run((_lua.RECORD, [self.state_key(name)], args)))

    async def skip(self, lease: Lease, name: str, upto_ms: int, skipped: int = 0) -> bool | None:
        """Move the cursor to ``upto_ms`` without firing, counting ``skipped`` dropped occurrences
        (``None``: fenced, not the leader)."""
        keys = [self.leader_key, self.state_key(name)]
        reply = int(await self._run((_lua.SKIP, keys, [lease.value, upto_ms, skipped])))
        return None if reply < 0 else bool(reply)

    # --- the leader lease --------------------------------------------------------------------------

    async def acquire(self, instance: str, lease_s: float) -> Lease:
        """Take the lease if free, renew it if ours; a new holder gets a new (higher) fencing token."""
        if "|" in instance or not instance:
            raise ConfigError(f"bad scheduler instance id {instance!r}")
        reply = await self._run(
            (_lua.ACQUIRE, [self.leader_key, self.epoch_key], [instance, max(1, round(lease_s * 1000))])
        )
        return Lease(instance, int(reply[1]), _text(reply[2]))

    async def release(self, lease: Lease) -> bool:
        return bool(await self._run((_lua.RELEASE, [self.leader_key], [lease.value])))

    async def leader(self) -> Lease | None:
        """Who leads now (as a lease held by its holder), or ``None``."""
        raw = _text(await self._command("GET", self.leader_key))
        if raw is None or "|" not in raw:
            return None
        holder, _, token = raw.rpartition("|")
        return Lease(holder, int(token) if token.isdigit() else 0, holder)

    async def aclose(self) -> None:
        await self._runner.aclose()


def _definition(s: Schedule, origin: Origin, now: int) -> str:
    return json.dumps({"schedule": s.as_dict(), "origin": origin, "updated_ms": now})


def _entry(raw: Any, state: dict[Any, Any]) -> Entry:
    doc = json.loads(_text(raw) or "{}")
    return Entry(
        Schedule.from_dict(doc["schedule"]),
        "code" if doc.get("origin") == "code" else "runtime",
        ScheduleState.from_hash(state),
        int(doc.get("updated_ms", 0)),
    )
