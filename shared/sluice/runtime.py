"""What every sluice service does the same way at the top of its process: the event loop (uvloop where
it is installed), its logging, and the listening socket of an HTTP service.

A service binds its socket *before* it starts anything else (:func:`listen`), so a taken port or a bad
address is one :class:`~sluice.errors.ConfigError` line and exit 1, not a traceback from deep inside
uvicorn after the broker connections were opened.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sluice.errors import ConfigError

__all__ = ["LOG_FORMAT", "listen", "run", "setup_logging"]

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (the one event loop of a sluice process)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def setup_logging(level: str) -> None:
    """One line per event on stderr, at ``level`` (a service's ``SLUICE_LOG_LEVEL``)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), or :class:`ConfigError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
