"""uvicorn's ``Server`` driven by :class:`sluice.runtime.Shutdown` instead of its own signal handlers
(imported by :func:`sluice.runtime.serve_http` only, so a worker never loads uvicorn)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import uvicorn

from sluice.runtime import Shutdown

__all__ = ["HttpServer"]


class HttpServer(uvicorn.Server):
    """A uvicorn server whose drain is asked for by a :class:`Shutdown` (see :meth:`on_signals`)."""

    _on_drain: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals go through Shutdown.signals, installed around serve()

    def on_signals(
        self, logger: logging.Logger | None = None, on_drain: Callable[[], None] | None = None
    ) -> Shutdown:
        """First request: ``should_exit`` (stop accepting, finish open requests) and ``on_drain`` (the
        app ends what would outlast the drain: long polls); second: ``force_exit``."""
        self._on_drain = on_drain
        return Shutdown(logger, on_stop=self._drain, on_force=self._force)

    def _drain(self) -> None:
        self.should_exit = True
        if self._on_drain is not None:
            self._on_drain()

    def _force(self) -> None:
        self.force_exit = True
