"""What a task declares about how the fleet runs it: rate limit, concurrency, timeout, retry, breaker,
idempotency (docs/policies.md), and whether its state and result are tracked (docs/tasks.md).

Each is a small frozen dataclass, checked when built, so a bad declaration fails at import, not at the
first message. :class:`TaskPolicy` bundles them; ``@task(..., rate_limit="100/s", retry=RetryPolicy())``
builds one. The worker enforces them (``sluice_worker.policies``, a pipeline of steps); nothing here talks to
a broker.

Durations and rates are written the way people write them::

    parse_duration("1500ms") == 1.5      parse_rate("6000/min") == RateLimit(6000, 60.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from sluice.errors import ConfigError
from sluice.protocol import TaskMessage
from sluice.resilience import BreakerPolicy, Rate, RetryPolicy
from sluice.resilience.budget import DEFAULT_MIN_PER_SECOND, DEFAULT_RATIO, DEFAULT_WINDOW, check_budget

__all__ = [
    "Breaker",
    "Concurrency",
    "Fair",
    "Idempotency",
    "PolicyOptions",
    "RateLimit",
    "ResultPolicy",
    "RetryBudgetPolicy",
    "TaskPolicy",
    "parse_duration",
    "parse_rate",
]

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d*)?)?\s*([a-z]+)(?:\s+([a-z]+))?(?:\s+([a-z]+))?\s*$")
#: how a rate limit counts: GCRA (smooth, bursts up to ``burst``) or an exact sliding window
WINDOWS = ("gcra", "sliding")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"30s"``, ``"5m"``, ``"1500ms"``, ``"2h"``, ``"1d"`` or a bare number of seconds."""
    if isinstance(text, bool):
        raise ConfigError(f"bad duration {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION.match(text.lower())
        if m is None or m.group(2) not in ("", *_UNITS):
            raise ConfigError(f"bad duration {text!r}: use a number with ms, s, m, h or d (e.g. 30s, 1500ms)")
        seconds = float(m.group(1)) * _UNITS.get(m.group(2), 1.0)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"bad duration {text!r}: must be a finite number >= 0")
    return seconds


def _field_name(name: str, what: str) -> str:
    if not _FIELD.match(name):
        raise ConfigError(f"{what}: bad payload field {name!r} (dotted identifiers, e.g. tenant or user.id)")
    return name


def payload_field(payload: Mapping[str, Any], dotted: str) -> str | None:
    """The payload's value at ``dotted`` (``"user.id"``) as text, or ``None`` when absent or not a scalar."""
    value: Any = payload
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``limit`` runs per ``period`` seconds fleet-wide, at most ``burst`` at once.

    ``window`` is how it counts: ``"gcra"`` (the default: smooth, up to ``burst + rate * t`` in any
    interval of length ``t``, so about twice ``limit`` in one period with the default burst) or
    ``"sliding"`` (never more than ``limit`` in any window of ``period``, exactly; ``burst`` does not apply).
    With ``adaptive`` (GCRA only; ``"200/s adaptive"``), each throttle (a handler's ``sluice.Throttled``)
    halves the fleet's effective rate and each quiet 5 s raises it by a tenth of ``limit``, back up to
    ``limit`` (:class:`~sluice.resilience.AdaptiveRate`); the limiter admits at the effective rate.
    With ``key`` (a payload field, dotted), each value of that field has its own limit (per tenant).
    ``limit`` and ``period`` are the :class:`~sluice.resilience.Rate` the worker's limiter enforces
    (:attr:`rate`, checked the same way); ``burst`` is the limiter's ``burst`` (:attr:`effective_burst`).
    """

    limit: int
    period: float = 1.0
    burst: int | None = None
    key: str | None = None
    window: str = "gcra"
    adaptive: bool = False

    def __post_init__(self) -> None:
        Rate.check(self.limit, self.period, "rate limit")
        if self.burst is not None and self.burst < 1:
            raise ConfigError(f"bad burst {self.burst}: must be at least 1")
        if self.key is not None:
            _field_name(self.key, "rate limit key")
        if self.window not in WINDOWS:
            raise ConfigError(f"bad rate limit window {self.window!r}: use {' or '.join(WINDOWS)}")
        if self.window == "sliding" and self.burst is not None:
            raise ConfigError("a sliding window has no burst (all of its limit may go at once)")
        if self.window == "sliding" and self.adaptive:
            raise ConfigError("an adaptive rate is GCRA's: a sliding window cannot be adaptive")

    @classmethod
    def parse(
        cls, spec: str, *, burst: int | None = None, key: str | None = None, adaptive: bool = False
    ) -> RateLimit:
        """``"100/s"``, ``"6000/min"``, ``"10/5s"``, ``"1000/h"``, ``"50/d"``; a window after it:
        ``"50/s sliding"`` (``"50/s gcra"`` is the default spelled out); ``"200/s adaptive"`` (or
        ``"200/s gcra adaptive"``) is ``adaptive=True``."""
        m = _RATE.match(spec.lower())
        words = [w for w in (m.group(4), m.group(5)) if w] if m else []
        spelled = words[-1:] == ["adaptive"]
        window = (words[:-1] if spelled else words) or ["gcra"]
        if m is None or m.group(3) not in _UNITS or len(window) > 1 or window[0] not in WINDOWS:
            raise ConfigError(
                f"bad rate {spec!r}: use N/unit, e.g. 100/s, 6000/min, 10/5s, optionally with a window: "
                "50/s sliding, or adaptive: 200/s adaptive"
            )
        count = float(m.group(2)) if m.group(2) else 1.0
        return cls(int(m.group(1)), count * _UNITS[m.group(3)], burst, key, window[0], adaptive or spelled)

    @property
    def rate(self) -> Rate:
        """The limiter's rate: ``limit`` per ``period`` (the one way from this declaration to a
        :class:`~sluice.resilience.Rate`)."""
        return Rate(self.limit, self.period)

    @property
    def effective_burst(self) -> int:
        return self.limit if self.burst is None else self.burst

    def __str__(self) -> str:
        suffix = ("" if self.window == "gcra" else f" {self.window}") + (" adaptive" if self.adaptive else "")
        for unit in ("s", "min", "h", "d"):
            if self.period == _UNITS[unit]:
                return f"{self.limit}/{unit}{suffix}"
        return f"{self.limit}/{self.period:g}s{suffix}"


def parse_rate(spec: str | RateLimit) -> RateLimit:
    return spec if isinstance(spec, RateLimit) else RateLimit.parse(spec)


#: sub-queues of a fair queue when ``fair=`` does not say (docs/policies.md, "Fair share")
DEFAULT_SHARDS = 8
MAX_SHARDS = 64


@dataclass(frozen=True, slots=True)
class Fair:
    """Fair share per tenant: the task's publishers route it by the payload field ``key`` (dotted) to one
    of ``shards`` sub-queues of its queue, which the worker consumes side by side (docs/policies.md,
    "Fair share"). ``key=None`` in a declaration is the rate limit's ``key`` (``fair=True``); a built
    :class:`TaskPolicy` always holds a key. Every task of one queue must declare the same ``shards``.
    """

    key: str | None = None
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if self.key is not None:
            _field_name(self.key, "fair key")
        if (
            isinstance(self.shards, bool)
            or not isinstance(self.shards, int)
            or not 2 <= self.shards <= MAX_SHARDS
        ):
            raise ConfigError(f"bad fair shards {self.shards!r}: use an integer from 2 to {MAX_SHARDS}")


def _fair(fair: bool | str | Fair | None, rate_limit: RateLimit | None) -> Fair | None:
    """``fair=`` as a :class:`Fair` with its key: ``True`` is the rate limit's key, a string a field."""
    if fair is None or fair is False:
        return None
    if isinstance(fair, str):
        return Fair(fair)
    if fair is True:
        fair = Fair()
    if not isinstance(fair, Fair):
        raise ConfigError(f"bad fair {fair!r}: use True, a payload field name or a Fair")
    if fair.key is None:
        if rate_limit is None or rate_limit.key is None:
            raise ConfigError(
                "fair=True takes the tenant from the rate limit's key: declare one, or name the field"
            )
        fair = Fair(rate_limit.key, fair.shards)
    return fair


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` runs at once fleet-wide (per value of the payload field ``key`` if given).

    Each run holds a lease of ``lease`` seconds, renewed while it runs; a dead worker's slot comes back
    when its lease expires.
    """

    limit: int
    key: str | None = None
    lease: float = 60.0

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.lease > 0:
            raise ConfigError(
                f"bad concurrency {self.limit} (lease {self.lease}s): need limit >= 1, lease > 0"
            )
        if self.key is not None:
            _field_name(self.key, "concurrency key")


@dataclass(frozen=True, slots=True)
class Idempotency:
    """Run each key's effect once. The key is the message's ``x-sluice-idempotency-key`` header, or, with
    ``fields``, those payload fields joined (a message lacking a field has no key and simply runs).

    The claim is completed right after the handler returns, before the ack, and kept ``ttl`` seconds: a
    redelivery after that (a worker killed before its ack, a DLQ replay) is acked and skipped. A claim
    whose worker died mid-run expires after ``lease`` seconds and the task runs again.
    """

    fields: tuple[str, ...] = ()
    ttl: float = 24 * 3600.0
    lease: float = 300.0

    def __post_init__(self) -> None:
        if not self.ttl > 0 or not self.lease > 0:
            raise ConfigError("idempotency ttl and lease must be positive")
        for f in self.fields:
            _field_name(f, "idempotency field")

    def key_for(self, message: TaskMessage) -> str | None:
        """The deduplication key of ``message`` (without the task name), or ``None``."""
        if not self.fields:
            return message.idempotency_key
        parts = [payload_field(message.payload, f) for f in self.fields]
        if any(p is None for p in parts):
            return None
        return "|".join(p for p in parts if p is not None)


@dataclass(frozen=True, slots=True)
class Breaker:
    """A circuit breaker shared, by ``name``, by every task and worker naming it."""

    name: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)

    def __post_init__(self) -> None:
        if not self.name or "{" in self.name or "}" in self.name:
            raise ConfigError(f"bad breaker name {self.name!r}")


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy:
    """A fleet-wide retry budget (:class:`~sluice.resilience.RetryBudget`): the retries of the last
    ``window`` seconds may be ``ratio`` of the first attempts in it plus ``min_per_second`` per second.

    Every worker deposits the task's first attempts and asks the budget before each retry; a retry it
    refuses goes to the DLQ (reason ``retry_budget_exhausted``, replayable after the outage) instead
    of the delay tiers, so an outage of what the task calls does not become a retry storm. Tasks naming
    the same ``name`` share one budget; without a name the task has its own.

    ``ratio``, ``min_per_second`` and ``window`` are the primitive's, with its defaults and its check
    (:data:`sluice.resilience.budget.DEFAULT_RATIO` and the others; why 1 per second and not Finagle's 10:
    :mod:`sluice.resilience.budget`).
    """

    name: str | None = None
    ratio: float = DEFAULT_RATIO
    min_per_second: float = DEFAULT_MIN_PER_SECOND
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "{" in self.name or "}" in self.name):
            raise ConfigError(f"bad retry budget name {self.name!r}")
        check_budget(self.ratio, self.min_per_second, self.window)


@dataclass(frozen=True, slots=True)
class ResultPolicy:
    """Store the handler's return value (its return annotation is the schema) for ``ttl`` seconds after the
    task ends, if its JSON is at most ``max_bytes`` (a bigger one is refused: recorded as the task's
    ``result_error``, the task still succeeded). Declaring a result implies tracking."""

    ttl: float = 86400.0
    max_bytes: int = 65536

    def __post_init__(self) -> None:
        if isinstance(self.ttl, bool) or not (isinstance(self.ttl, int | float) and 0 < self.ttl < math.inf):
            raise ConfigError(f"bad result ttl {self.ttl!r}: must be a finite number of seconds > 0")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ConfigError(f"bad result max_bytes {self.max_bytes!r}: must be an integer >= 1")


class PolicyOptions(TypedDict, total=False):
    """The policies ``@task(...)`` takes, in their convenient forms (:meth:`TaskPolicy.build`): a rate as
    ``"100/s"``, a concurrency as an int, a timeout as ``"30s"``, a breaker by name, ``True`` for the
    default idempotency or retry budget; or the declarations themselves. Every one defaults to ``None``."""

    rate_limit: str | RateLimit | None
    concurrency: int | Concurrency | None
    timeout: float | str | None
    retry: RetryPolicy | None
    breaker: str | Breaker | None
    idempotency: bool | Idempotency | None
    retry_budget: bool | RetryBudgetPolicy | None
    track: bool | None
    result: bool | ResultPolicy | None
    fair: bool | str | Fair | None


_NAMES = tuple(PolicyOptions.__annotations__)


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """Every policy of one task; ``None`` is "not declared". ``track``: the worker records the task's state
    (``result`` implies it)."""

    rate_limit: RateLimit | None = None
    concurrency: Concurrency | None = None
    timeout: float | None = None
    retry: RetryPolicy | None = None
    breaker: Breaker | None = None
    idempotency: Idempotency | None = None
    retry_budget: RetryBudgetPolicy | None = None
    track: bool = False
    result: ResultPolicy | None = None
    fair: Fair | None = None

    def __post_init__(self) -> None:
        if self.fair is not None and (not isinstance(self.fair, Fair) or self.fair.key is None):
            raise ConfigError(
                f"bad fair {self.fair!r}: use a Fair with a key (TaskPolicy.build resolves True)"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"bad timeout {self.timeout}: must be > 0 seconds")
        if self.result is not None and not isinstance(self.result, ResultPolicy):
            raise ConfigError(f"bad result {self.result!r}: use True or a ResultPolicy")
        if self.result is not None and not self.track:
            object.__setattr__(self, "track", True)  # a stored result needs the task's record

    @classmethod
    def build(cls, **options: Unpack[PolicyOptions]) -> TaskPolicy:
        """From the decorator's convenient forms (strings, ints, ``True``); an unknown keyword is a
        ``TypeError``, as in any call."""
        unknown = options.keys() - PolicyOptions.__optional_keys__
        if unknown:
            raise TypeError(f"unexpected keyword argument {min(unknown)!r} (policies: {', '.join(_NAMES)})")
        rate_limit, concurrency, timeout = (
            options.get("rate_limit"),
            options.get("concurrency"),
            options.get("timeout"),
        )
        breaker, idempotency, retry_budget = (
            options.get("breaker"),
            options.get("idempotency"),
            options.get("retry_budget"),
        )
        limit = None if rate_limit is None else parse_rate(rate_limit)
        return cls(
            rate_limit=limit,
            concurrency=Concurrency(concurrency) if isinstance(concurrency, int) else concurrency,
            timeout=None if timeout is None else parse_duration(timeout),
            retry=options.get("retry"),
            breaker=Breaker(breaker) if isinstance(breaker, str) else breaker,
            idempotency=Idempotency() if idempotency is True else (idempotency or None),
            retry_budget=RetryBudgetPolicy() if retry_budget is True else (retry_budget or None),
            track=bool(options.get("track")),
            result=_result(options.get("result")),
            fair=_fair(options.get("fair"), limit),
        )

    @property
    def empty(self) -> bool:
        return self == _EMPTY


def _result(result: bool | ResultPolicy | None) -> ResultPolicy | None:
    if result is True:
        return ResultPolicy()
    if result is None or result is False:
        return None
    if not isinstance(result, ResultPolicy):
        raise ConfigError(f"bad result {result!r}: use True or a ResultPolicy")
    return result


_EMPTY = TaskPolicy()
