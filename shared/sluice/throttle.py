"""Upstream throttling: :class:`Throttled`, raised by a handler when the API it calls said "too many
requests", and :func:`raise_for_throttle`, which reads that from an httpx response.

``Throttled`` carries when to try again (``retry_after`` seconds, or ``until`` a moment) and, optionally,
the ``scope`` that is throttled (the API host, a tenant's API key); without one the task's own
rate-limit key is meant. Whoever catches it (the worker's rate-limit step, or a
:class:`~sluice.resilience.RetryPolicy`, which honours any error's numeric ``retry_after``) waits that
long. Every wait is bounded: at least 0 (a time in the past), at most :data:`MAX_RETRY_AFTER` (1 h: an
upstream asking for a day is capped, so a typo in its header cannot park work for a day).

:func:`raise_for_throttle` reads, in this order, the first header that makes sense:

* ``Retry-After``: seconds (``120``, also ``1.5``) or an HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``;
  RFC 850 and asctime forms too), read against the local wall clock;
* ``X-RateLimit-Reset``: epoch seconds when the value is at least 10^9 (after 2001: GitHub's form),
  epoch milliseconds at 10^12 or more, else seconds from now;
* ``RateLimit-Reset`` (the IETF draft): seconds from now.

A 429 always raises (with :data:`DEFAULT_RETRY_AFTER`, 1 s, when no header makes sense: missing,
garbage, several values); a 503 raises only when it carries one of those headers (an upstream saying
"come back then"), otherwise it is an ordinary server error and is left to the caller. httpx is not
imported here: any object with ``status_code`` and ``headers.get`` will do.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from sluice.errors import ConfigError, SluiceError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "MAX_RETRY_AFTER",
    "THROTTLE_STATUSES",
    "Throttled",
    "raise_for_throttle",
    "retry_after_of",
]

DEFAULT_RETRY_AFTER = 1.0  # seconds, when a throttling answer says nothing usable about when
MAX_RETRY_AFTER = 3600.0  # seconds: the longest wait any answer can ask for
THROTTLE_STATUSES = (429, 503)

_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.ASCII)
_SIGNED = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*$", re.ASCII)

Now = Callable[[], float]


def _bounded(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Throttled(SluiceError):
    """The upstream said "not now": try again after ``retry_after`` seconds (``until``, as a moment).

    Give ``retry_after`` (seconds) or ``until`` (a datetime; naive means UTC), not both; neither means
    :data:`DEFAULT_RETRY_AFTER`. Either is bounded to ``[0, MAX_RETRY_AFTER]``. ``scope`` names what is
    throttled (``None``: the task's own rate-limit key). ``status`` is the HTTP status, when there was one.
    ``now`` (epoch seconds) is for tests: the moment ``until`` and ``retry_after`` are counted from.
    """

    def __init__(
        self,
        *,
        retry_after: float | None = None,
        until: datetime | None = None,
        scope: str | None = None,
        status: int | None = None,
        now: float | None = None,
    ) -> None:
        if retry_after is not None and until is not None:
            raise ConfigError("Throttled takes retry_after or until, not both")
        if scope == "":
            raise ConfigError("a throttle scope must not be empty (None: the task's own rate-limit key)")
        at = time.time() if now is None else now
        if until is not None:
            moment = until if until.tzinfo is not None else until.replace(tzinfo=UTC)
            seconds = moment.timestamp() - at
        elif retry_after is None:
            seconds = DEFAULT_RETRY_AFTER
        elif (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or math.isnan(retry_after)
        ):
            raise ConfigError(f"bad retry_after {retry_after!r}: a number of seconds")
        else:
            seconds = float(retry_after)
        self.retry_after = _bounded(seconds)
        self.until = datetime.fromtimestamp(at + self.retry_after, UTC)
        self.scope = scope
        self.status = status
        what = "throttled by the upstream" if status is None else f"throttled by the upstream (HTTP {status})"
        where = "" if scope is None else f" for {scope}"
        super().__init__(
            f"{what}{where}: retry after {self.retry_after:g} s (at {self.until.isoformat(timespec='seconds')})"
        )

    def __reduce__(self) -> tuple[Callable[[], Throttled], tuple[()]]:
        """Picklable (keyword-only arguments): the same retry_after, until, scope and status."""
        at = self.until.timestamp() - self.retry_after
        rebuild = functools.partial(
            Throttled, retry_after=self.retry_after, scope=self.scope, status=self.status, now=at
        )
        return rebuild, ()


def _retry_after(value: str, now: float) -> float | None:
    """Seconds from a ``Retry-After`` value, or ``None`` when it makes no sense."""
    m = _SIGNED.match(value)
    if m is not None:
        return _bounded(float(m.group(1)))  # a negative number: already past
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return _bounded(moment.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def _reset(value: str, now: float) -> float | None:
    """Seconds from an ``X-RateLimit-Reset`` value (epoch s, epoch ms, or a delta), or ``None``."""
    m = _NUMBER.match(value)
    if m is None:
        return None
    n = float(m.group(1))
    if not math.isfinite(n):
        return None
    if n >= 1e12:
        return _bounded(n / 1000 - now)
    if n >= 1e9:
        return _bounded(n - now)
    return _bounded(n)


def _delta(value: str, now: float) -> float | None:
    m = _NUMBER.match(value)
    return None if m is None else _bounded(float(m.group(1)))


_HEADERS: tuple[tuple[str, Callable[[str, float], float | None]], ...] = (
    ("retry-after", _retry_after),
    ("x-ratelimit-reset", _reset),
    ("ratelimit-reset", _delta),
)


def retry_after_of(headers: httpx.Headers | dict[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from the first throttling header that makes sense (see the module docstring), or
    ``None`` when there is none. Never raises on a bad value."""
    at = time.time() if now is None else now
    lowered = None if not isinstance(headers, dict) else {k.lower(): v for k, v in headers.items()}
    for name, parse in _HEADERS:
        raw = headers.get(name) if lowered is None else lowered.get(name)
        if raw is None:
            continue
        try:
            got = parse(str(raw), at)
        except Exception:  # a header is the upstream's text: nothing in it may crash the caller
            got = None
        if got is not None:
            return got
    return None


def _has_any(headers: httpx.Headers | dict[str, str]) -> bool:
    if isinstance(headers, dict):
        present = {k.lower() for k in headers}
        return any(name in present for name, _ in _HEADERS)
    return any(headers.get(name) is not None for name, _ in _HEADERS)


def raise_for_throttle(
    response: httpx.Response,
    *,
    scope: str | None = None,
    default: float = DEFAULT_RETRY_AFTER,
    now: float | None = None,
) -> None:
    """Raise :class:`Throttled` if ``response`` is a 429, or a 503 with a throttling header; else return.

    ``retry_after`` comes from the headers (see the module docstring), ``default`` seconds when none
    makes sense; ``scope`` is passed on. ``now`` (epoch seconds) is for tests.
    """
    status = response.status_code
    if status not in THROTTLE_STATUSES:
        return
    headers = response.headers
    if status == 503 and not _has_any(headers):
        return
    at = time.time() if now is None else now
    seconds = retry_after_of(headers, now=at)
    raise Throttled(retry_after=default if seconds is None else seconds, scope=scope, status=status, now=at)
