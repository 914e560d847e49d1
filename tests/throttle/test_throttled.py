"""``sluice.throttle.Throttled`` and the headers ``raise_for_throttle`` reads, on plain httpx responses."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from sluice.errors import ConfigError, SluiceError
from sluice.throttle import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    Throttled,
    raise_for_throttle,
    retry_after_of,
)

NOW = 1_800_000_000.0  # a fixed wall clock (2027-01-15): every case is exact


def throttled(status: int, headers: dict[str, str | bytes], **kw: object) -> Throttled | None:
    try:
        raise_for_throttle(httpx.Response(status, headers=headers), now=NOW, **kw)  # type: ignore[arg-type]
    except Throttled as exc:
        return exc
    return None


def test_throttled_carries_when_and_what() -> None:
    exc = Throttled(retry_after=2.5, scope="api.example.com", now=NOW)
    assert isinstance(exc, SluiceError)
    assert exc.retry_after == 2.5 and exc.scope == "api.example.com" and exc.status is None
    assert exc.until == datetime.fromtimestamp(NOW + 2.5, UTC)
    assert "retry after 2.5 s" in str(exc) and "api.example.com" in str(exc)
    at = Throttled(until=datetime.fromtimestamp(NOW + 30, UTC), now=NOW)
    assert at.retry_after == 30.0 and at.scope is None
    naive = Throttled(until=datetime.fromtimestamp(NOW + 30, UTC).replace(tzinfo=None), now=NOW)
    assert naive.retry_after == 30.0  # naive: UTC
    assert Throttled(now=NOW).retry_after == DEFAULT_RETRY_AFTER


def test_throttled_bounds_and_refusals() -> None:
    assert Throttled(retry_after=-5, now=NOW).retry_after == 0.0
    assert Throttled(until=datetime.fromtimestamp(NOW - 60, UTC), now=NOW).retry_after == 0.0
    assert Throttled(retry_after=float("inf"), now=NOW).retry_after == MAX_RETRY_AFTER
    assert Throttled(retry_after=10 * 86_400, now=NOW).retry_after == MAX_RETRY_AFTER
    bad: dict[str, Any]
    for bad in ({"retry_after": float("nan")}, {"retry_after": "5"}, {"scope": ""}):
        with pytest.raises(ConfigError):
            Throttled(**bad)
    with pytest.raises(ConfigError):
        Throttled(retry_after=1, until=datetime.now(UTC))


def test_throttled_pickles() -> None:
    exc = Throttled(retry_after=7, scope="tenant-9", status=429, now=NOW)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.retry_after, back.until, back.scope, back.status) == (7.0, exc.until, "tenant-9", 429)


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": formatdate(NOW + 42, usegmt=True)}, 42.0),  # an HTTP-date
        ({"Retry-After": "Sunday, 06-Nov-94 08:49:37 GMT"}, 0.0),  # RFC 850, long past
        ({"Retry-After": formatdate(NOW - 3600, usegmt=True)}, 0.0),  # in the past
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "864000"}, MAX_RETRY_AFTER),  # ten days: capped
        ({"Retry-After": formatdate(NOW + 30 * 86_400, usegmt=True)}, MAX_RETRY_AFTER),
        ({"X-RateLimit-Reset": str(int(NOW) + 17)}, 17.0),  # epoch seconds (GitHub)
        ({"X-RateLimit-Reset": str(int(NOW * 1000) + 2500)}, 2.5),  # epoch milliseconds
        ({"X-RateLimit-Reset": "9"}, 9.0),  # seconds from now
        ({"RateLimit-Reset": "4"}, 4.0),  # the IETF draft's header
        ({"Retry-After": "soon-ish", "X-RateLimit-Reset": "6"}, 6.0),  # garbage first, then a good one
    ],
)
def test_the_headers_say_when(headers: dict[str, str | bytes], want: float) -> None:
    exc = throttled(429, headers)
    assert exc is not None and exc.status == 429
    assert exc.retry_after == pytest.approx(want)


@pytest.mark.parametrize(
    "value",
    ["soon-ish", "", "inf", "nan", "1e9", "120, 120", "Mon, 99 Foo 2026 99:99:99 GMT", "\x00", "٣"],
)
def test_garbage_or_nothing_means_the_default(value: str) -> None:
    exc = throttled(429, {"Retry-After": value.encode()})  # bytes: httpx takes only ASCII str
    assert exc is not None and exc.retry_after == DEFAULT_RETRY_AFTER
    assert throttled(429, {}, default=2.0).retry_after == 2.0  # type: ignore[union-attr]
    assert retry_after_of({"X-RateLimit-Reset": value}, now=NOW) is None


def test_which_responses_raise() -> None:
    assert throttled(200, {"Retry-After": "5"}) is None
    assert throttled(500, {"Retry-After": "5"}) is None
    assert throttled(503, {}) is None  # a plain server error: left to the caller
    unavailable = throttled(503, {"Retry-After": "30"}, scope="api.example.com")
    assert unavailable is not None and unavailable.retry_after == 30.0 and unavailable.status == 503
    assert unavailable.scope == "api.example.com"
    assert throttled(503, {"Retry-After": "garbage"}).retry_after == DEFAULT_RETRY_AFTER  # type: ignore[union-attr]


def test_retry_after_of_reads_plain_dicts_in_any_case() -> None:
    assert retry_after_of({"retry-after": "3"}, now=NOW) == 3.0
    assert retry_after_of({"RETRY-AFTER": "3"}, now=NOW) == 3.0
    assert retry_after_of({}, now=NOW) is None


def test_an_http_date_without_a_time_zone_is_utc() -> None:
    when = (datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=8)).strftime("%a %b %d %H:%M:%S %Y")
    assert throttled(429, {"Retry-After": when}).retry_after == 8.0  # type: ignore[union-attr]


def test_importing_sluice_throttle_does_not_import_httpx() -> None:
    code = "import sys, sluice, sluice.throttle\nassert 'httpx' not in sys.modules, 'httpx imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
