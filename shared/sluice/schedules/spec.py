"""A schedule: when a task is fired (a cron expression in a time zone, or a fixed interval), with what
payload, on which queue, and what happens to the occurrences missed while no scheduler ran.

:func:`every` and :func:`cron` build one and check it at once: a bad interval, cron expression or time zone
is a one-line :class:`~sluice.errors.ConfigError` at declaration, never at the first fire.

    every("5m")                                   # at :00, :05, :10 ... (UTC, aligned on the epoch)
    cron("0 6 * * *", tz="Europe/Paris", payload={"report": "daily"})
    cron("*/10 * * * * *")                        # a sixth field: seconds (cronsim)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from sluice.errors import ConfigError, ProtocolError
from sluice.policy import parse_duration
from sluice.protocol import encode_body
from sluice.topology import check_queue_name

__all__ = ["DEFAULT_MAX_CATCH_UP", "CatchUp", "Schedule", "check_name", "cron", "every", "parse_catch_up"]

#: the bound of ``catch_up="all"``: at most this many missed occurrences are fired (the latest ones)
DEFAULT_MAX_CATCH_UP = 100
#: a payload is stored and fired as it is: keep it small
MAX_PAYLOAD_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_\-.]{1,150}$")
_TASK = re.compile(r"^[A-Za-z0-9_\-.:]{1,200}$")


class CatchUp(StrEnum):
    """What a scheduler does with the occurrences missed while no scheduler ran."""

    SKIP = "skip"  # none of them: the next occurrence is the next fire
    LATEST = "latest"  # one run for all of them (the latest)
    ALL = "all"  # each of them, at most ``max_catch_up`` (the latest ones)


def check_name(name: str) -> str:
    """A schedule's name: 1-150 of ``A-Z a-z 0-9 _ - .`` (no ``:``, which separates it from the
    occurrence in the task id ``{name}:{occurrence ms}``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"bad schedule name {name!r}: use 1-150 of A-Z a-z 0-9 _ - .")
    return name


def parse_catch_up(value: CatchUp | str) -> CatchUp:
    try:
        return CatchUp(value)
    except ValueError:
        raise ConfigError(f"bad catch-up {value!r}: skip, latest or all") from None


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"unknown time zone {tz!r} (an IANA name, e.g. Europe/Paris or UTC)") from None


def _check_cron(expr: str, tz: str) -> None:
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=_zone(tz)))
    except CronSimError as e:
        raise ConfigError(f"bad cron expression {expr!r}: {e}") from None
    except (ValueError, TypeError) as e:  # cronsim lets a few malformed fields through as ValueError
        raise ConfigError(f"bad cron expression {expr!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule. Exactly one of ``cron`` (an expression, 5 fields or 6 with seconds, in ``tz``) and
    ``interval`` (seconds; occurrences at whole multiples of it since the Unix epoch, so every replica and
    every restart agrees on them).

    ``name``: the schedule's identity (defaults to the task's name when declared on a task); ``task``: the
    task fired; ``queue``: where (``None``: the task's queue if the scheduler knows the task, else the
    default queue); ``jitter``: seconds, each occurrence is fired up to that much after its due time
    (the same offset on every replica, from the name and the occurrence); ``catch_up`` and
    ``max_catch_up``: see :class:`CatchUp`; ``enabled``: ``False`` declares it paused.
    """

    name: str = ""
    task: str = ""
    cron: str | None = None
    interval: float | None = None
    tz: str = "UTC"
    payload: dict[str, Any] = field(default_factory=dict, hash=False)
    queue: str | None = None
    jitter: float = 0.0
    catch_up: CatchUp = CatchUp.LATEST
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.name:
            check_name(self.name)
        if self.task and not _TASK.match(self.task):
            raise ConfigError(f"bad task name {self.task!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
        if (self.cron is None) == (self.interval is None):
            raise ConfigError("a schedule needs exactly one of cron and interval")
        if self.cron is not None:
            _check_cron(self.cron, self.tz)
        else:
            _zone(self.tz)
            if not isinstance(self.interval, int | float) or not 0.001 <= self.interval <= 366 * 86400:
                raise ConfigError(f"bad interval {self.interval!r}: between 1ms and 366 days")
        if not isinstance(self.payload, dict):
            raise ConfigError("a schedule's payload must be a JSON object")
        try:
            encode_body(self.payload, MAX_PAYLOAD_BYTES)
        except ProtocolError as e:  # not JSON, too large: a declaration error like the others
            raise ConfigError(f"schedule payload: {e}") from None
        if self.queue is not None:
            check_queue_name(self.queue)
        if not 0 <= self.jitter <= 86400:
            raise ConfigError(f"bad jitter {self.jitter!r}: seconds between 0 and 86400")
        object.__setattr__(self, "catch_up", parse_catch_up(self.catch_up))
        if isinstance(self.max_catch_up, bool) or not isinstance(self.max_catch_up, int):
            raise ConfigError("max_catch_up must be an integer")
        if not 1 <= self.max_catch_up <= 10_000:
            raise ConfigError(f"bad max_catch_up {self.max_catch_up}: between 1 and 10000")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def interval_ms(self) -> int | None:
        return None if self.interval is None else max(1, round(self.interval * 1000))

    @property
    def spec(self) -> str:
        """The timing as a person writes it: the cron expression, or ``every 5m``-like text."""
        if self.cron is not None:
            return self.cron
        return f"every {_seconds_text(self.interval or 0.0)}"

    @property
    def timing(self) -> str:
        """What decides the occurrences (a change of it restarts the schedule from the time of change)."""
        return json.dumps([self.cron, self.interval_ms, self.tz])

    def bound(self, task: str, name: str | None = None) -> Schedule:
        """This schedule for ``task`` (its name: ``name``, else its own, else the task's)."""
        return replace(self, task=task, name=name or self.name or task)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the store's, the HTTP API's and ``sluice schedule ls --json``'s)."""
        return {
            "name": self.name,
            "task": self.task,
            "cron": self.cron,
            "interval": self.interval,
            "tz": self.tz,
            "payload": self.payload,
            "queue": self.queue,
            "jitter": self.jitter,
            "catch_up": str(self.catch_up),
            "max_catch_up": self.max_catch_up,
            "enabled": self.enabled,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Schedule:
        """From :meth:`as_dict`'s form; unknown keys are a :class:`ConfigError`."""
        known = {f for f in cls.__dataclass_fields__}
        extra = set(doc) - known
        if extra:
            raise ConfigError(f"unknown schedule field(s): {', '.join(sorted(extra))}")
        try:
            return cls(**doc)
        except TypeError as e:
            raise ConfigError(f"bad schedule: {e}") from None

    def occurrence_text(self, ms: int) -> str:
        """An occurrence in the schedule's time zone, ISO 8601."""
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.zone).isoformat(timespec="seconds")


def _seconds_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def every(
    interval: str | float,
    *,
    name: str = "",
    task: str = "",
    payload: dict[str, Any] | None = None,
    queue: str | None = None,
    jitter: str | float = 0.0,
    catch_up: CatchUp | str = CatchUp.LATEST,
    max_catch_up: int = DEFAULT_MAX_CATCH_UP,
    enabled: bool = True,
) -> Schedule:
    """A fixed interval: ``"30s"``, ``"5m"``, ``"1h"``, ``"1500ms"`` or seconds."""
    return Schedule(
        name=name,
        task=task,
        interval=parse_duration(interval),
        payload=dict(payload or {}),
        queue=queue,
        jitter=parse_duration(jitter),
        catch_up=parse_catch_up(catch_up),
        max_catch_up=max_catch_up,
        enabled=enabled,
    )


def cron(
    expr: str,
    *,
    tz: str = "UTC",
    name: str = "",
    task: str = "",
    payload: dict[str, Any] | None = None,
    queue: str | None = None,
    jitter: str | float = 0.0,
    catch_up: CatchUp | str = CatchUp.LATEST,
    max_catch_up: int = DEFAULT_MAX_CATCH_UP,
    enabled: bool = True,
) -> Schedule:
    """A cron expression (cronsim's syntax: 5 fields, or 6 with seconds) in the IANA time zone ``tz``."""
    return Schedule(
        name=name,
        task=task,
        cron=expr,
        tz=tz,
        payload=dict(payload or {}),
        queue=queue,
        jitter=parse_duration(jitter),
        catch_up=parse_catch_up(catch_up),
        max_catch_up=max_catch_up,
        enabled=enabled,
    )
