"""Running the top-level coroutine: uvloop where it exists, asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)
