"""Bounded waits on the injected clock: a future, or an event, or ``seconds`` on the clock, whichever is
first (``asyncio.wait_for`` would read the loop's time, not the clock a test moves)."""

from __future__ import annotations

import asyncio
from typing import Any

from sluice.resilience.clock import Clock

__all__ = ["until_done", "until_set"]


async def until_done(clock: Clock, seconds: float, fut: asyncio.Future[Any]) -> None:
    """Until ``fut`` is done or ``seconds`` have passed on ``clock`` (``fut`` is left as it is)."""
    if fut.done():
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()


async def until_set(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Until ``event`` is set or ``seconds`` have passed on ``clock``."""
    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await until_done(clock, seconds, waiter)
    finally:
        waiter.cancel()
