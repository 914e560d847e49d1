"""Bounded waits: a check polled until it answers, failing with what was awaited and its last answer.

``eventually`` inside a test's event loop (the check may be sync or async), ``wait_until`` in a plain
test. Both return the first truthy answer, so a test can wait for a value and use it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually", "wait_until"]

T = TypeVar("T")


class _Deadline:
    def __init__(self, within: float, what: str) -> None:
        self.at = time.monotonic() + within
        self.within = within
        self.what = what

    def check(self, last: object) -> None:
        """Raise once the deadline has passed (``last``: the check's last answer)."""
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.within}s waiting for {self.what} (last: {last!r})")


async def eventually(
    check: Callable[[], Awaitable[T] | T], within: float, what: str, every: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = _Deadline(within, what)
    while True:
        got = check()
        answer: T = await got if inspect.isawaitable(got) else got  # type: ignore[assignment]
        if answer:
            return answer
        deadline.check(answer)
        await asyncio.sleep(every)


def wait_until(check: Callable[[], T], within: float, what: str, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds (blocking)."""
    deadline = _Deadline(within, what)
    while True:
        answer = check()
        if answer:
            return answer
        deadline.check(answer)
        time.sleep(every)
