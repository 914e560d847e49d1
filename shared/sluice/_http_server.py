"""uvicorn's ``Server`` driven by :class:`sluice.runtime.Shutdown` instead of its own signal handlers
(imported by :func:`sluice.runtime.serve_http` only, so a worker never loads uvicorn)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from sluice.runtime import Shutdown

__all__ = ["HttpServer"]


class HttpServer(uvicorn.Server):
    """A uvicorn server whose drain is asked for by a :class:`Shutdown` (see :meth:`on_signals`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals go through Shutdown.signals, installed around serve()

    def on_signals(self, logger: logging.Logger | None = None) -> Shutdown:
        """First request: ``should_exit`` (stop accepting, finish open requests); second: ``force_exit``."""
        return Shutdown(logger, on_stop=self._drain, on_force=self._force)

    def _drain(self) -> None:
        self.should_exit = True

    def _force(self) -> None:
        self.force_exit = True
