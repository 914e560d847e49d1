"""``async with`` for everything sluice opens: entering returns the object, leaving awaits its ``aclose``.

One base class instead of the same ``__aenter__``/``__aexit__`` pair in every class that holds connections
(the publisher, the dead-letter queue, the resilience primitives). A class whose ``__aenter__`` opens
something overrides it and keeps the ``__aexit__``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["AsyncClosing"]


class AsyncClosing(ABC):
    """``async with obj:`` gives ``obj`` and awaits ``obj.aclose()`` on the way out, whatever happened."""

    __slots__ = ()

    @abstractmethod
    async def aclose(self) -> None:
        """Let go of what the object holds (connections, batches still on the wire)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
