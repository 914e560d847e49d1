"""A fake rate-limited upstream API on 127.0.0.1: what sluice's users call, for the throttling tests.

It enforces its own limit, an exact sliding window of ``limit`` requests per ``period`` seconds per API
key (the ``X-API-Key`` header, else ``anon``), on its own clock, and answers 429 beyond it with a
``Retry-After`` (how it is written: :attr:`FakeUpstream.mode`). A request inside the window answers 200
with JSON ``{"ok": true, "key": ..., "n": <admitted so far for that key>}``. Refused requests do not
count against the window (``count_refused=True`` makes them count). ``GET /stats`` answers the counts.

``mode`` (settable at run time, or per request with the ``X-Fake-Mode`` header):

* ``"seconds"``: ``Retry-After: <whole seconds, rounded up>`` (the default);
* ``"date"``: an HTTP-date (whole seconds, so up to a second early: clients may see a 429 again);
* ``"past"``: an HTTP-date an hour ago; ``"far"``: ``Retry-After: 864000`` (ten days);
* ``"garbage"``: ``Retry-After: soon-ish``; ``"none"``: no header at all;
* ``"reset-epoch"``: ``X-RateLimit-Reset: <epoch seconds>``, no Retry-After; ``"reset-delta"``: seconds.

Use it from a test with :func:`running_upstream` (a context manager; uvicorn in a thread of its own, on a
free port, stopped and joined on exit), so that it keeps answering whatever the test's event loop does,
and worker processes can call it at :attr:`FakeUpstream.url`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import uvicorn

from support.ports import free_port
from support.waiting import wait_until

__all__ = ["MODES", "FakeUpstream", "running_upstream"]

MODES = ("seconds", "date", "past", "far", "garbage", "none", "reset-epoch", "reset-delta")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class FakeUpstream:
    """The upstream's rules and what it saw (see the module docstring). Thread-safe."""

    limit: int
    period: float = 1.0
    mode: str = "seconds"
    count_refused: bool = False
    latency: float = 0.0  # seconds each answer takes (requests in flight, as on a real network)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    url: str = ""
    admitted: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    retry_afters: list[str] = field(default_factory=list)  # every Retry-After/-Reset header sent
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _log: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def total_refused(self) -> int:
        with self._lock:
            return sum(self.refused.values())

    @property
    def total_admitted(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.admitted.values())

    def reset(self) -> None:
        with self._lock:
            self.admitted.clear()
            self.refused.clear()
            self.retry_afters.clear()
            self._log.clear()

    def decide(self, key: str, mode: str | None = None) -> tuple[int, dict[str, str]]:
        """The status and headers of one request for ``key`` now."""
        with self._lock:
            now = self.clock()
            log = self._log[key]
            # the window is (now - period, now]: a request leaves it period seconds after it came
            del log[: bisect.bisect_right(log, now - self.period)]
            if len(log) < self.limit:
                log.append(now)
                self.admitted[key].append(now)
                return 200, {}
            self.refused[key] += 1
            if self.count_refused:
                log.append(now)
            wait = log[0] + self.period - now
            headers = self._throttle_headers(mode or self.mode, wait)
            self.retry_afters.extend(headers.values())
            return 429, headers

    def _throttle_headers(self, mode: str, wait: float) -> dict[str, str]:
        if mode == "seconds":
            return {"retry-after": str(max(1, math.ceil(wait)))}
        if mode == "date":
            return {"retry-after": formatdate(self.wall() + wait, usegmt=True)}
        if mode == "past":
            return {"retry-after": formatdate(self.wall() - 3600, usegmt=True)}
        if mode == "far":
            return {"retry-after": "864000"}
        if mode == "garbage":
            return {"retry-after": "soon-ish"}
        if mode == "reset-epoch":
            return {"x-ratelimit-reset": str(math.ceil(self.wall() + wait))}
        if mode == "reset-delta":
            return {"x-ratelimit-reset": str(max(1, math.ceil(wait)))}
        return {}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "admitted": {k: len(v) for k, v in self.admitted.items()},
                "refused": dict(self.refused),
            }

    def most_in_a_window(self, key: str) -> int:
        """The most admissions for ``key`` in any window of ``period`` (the upstream's own clock)."""
        with self._lock:
            stamps = sorted(self.admitted.get(key, []))
        most, lo = 0, 0
        for hi, t in enumerate(stamps):
            while stamps[lo] <= t - self.period:
                lo += 1
            most = max(most, hi - lo + 1)
        return most

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/stats":
            await _answer(send, 200, {}, self.stats())
            return
        key = headers.get("x-api-key", "anon")
        status, extra = self.decide(key, headers.get("x-fake-mode"))
        if self.latency:
            await asyncio.sleep(self.latency)
        body: dict[str, Any] = {"ok": status == 200, "key": key}
        if status == 200:
            with self._lock:
                body["n"] = len(self.admitted[key])
        await _answer(send, status, extra, body)


async def _answer(send: Send, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


@contextmanager
def running_upstream(upstream: FakeUpstream, *, start_timeout: float = 10.0) -> Iterator[FakeUpstream]:
    """Serve ``upstream`` on a free 127.0.0.1 port in a thread of its own while the block runs."""
    port = free_port()
    config = uvicorn.Config(
        upstream, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-upstream-{port}", daemon=True)
    thread.start()
    try:
        # uvicorn has no "started" event to wait on: its flag, polled with a bound (or the thread's death)
        wait_until(lambda: server.started or not thread.is_alive(), start_timeout, "the fake upstream", 0.01)
        if not server.started:
            raise RuntimeError(f"the fake upstream did not start on 127.0.0.1:{port}")
    except BaseException:
        server.should_exit = True
        thread.join(timeout=5)
        raise
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        server.should_exit = True
        thread.join(timeout=10)
