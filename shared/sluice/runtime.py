"""What every sluice service does the same way at the top of its process: the event loop (uvloop where
it is installed), its logging, signals into a drain, and the listening socket of an HTTP service.

A service binds its socket *before* it starts anything else (:func:`listen`), so a taken port or a bad
address is one :class:`~sluice.errors.ConfigError` line and exit 1, not a traceback from deep inside
uvicorn after the broker connections were opened.

SIGTERM or SIGINT asks a service to drain (:class:`Shutdown`): the worker lets running tasks finish
within its grace period, an HTTP service finishes its open requests. A second signal, of either kind,
cuts the drain short. :func:`serve_http` runs a uvicorn server with the same two steps.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sluice.errors import ConfigError

__all__ = [
    "LOG_FORMAT",
    "STOP_SIGNALS",
    "Shutdown",
    "listen",
    "run",
    "serve_http",
    "setup_logging",
]

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("sluice.runtime")


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
    """One line per event on stderr, at ``level`` (a service's ``SLUICE_LOG_LEVEL``).

    The AMQP libraries log only from WARNING up, and (but at DEBUG) without the tracebacks aiormq
    prints when the broker goes away or refuses a reconnection: each service says that in one line
    of its own ("lost the broker ...", "cannot reconnect ...", "... retrying in").
    """
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if level != "DEBUG":
        chatty = logging.getLogger("aiormq.connection")
        if _reconnect_chatter not in chatty.filters:
            chatty.addFilter(_reconnect_chatter)


# what aiormq logs (with tracebacks) when the broker goes away or refuses a reconnection attempt
_CHATTER = ("error when creating transport", "Unexpected connection close", "Cancelling cause reader")


def _reconnect_chatter(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_CHATTER))


class Shutdown:
    """Two events: ``stop`` (drain) on the first request, ``force`` (stop now) on the second.

    ``on_stop`` / ``on_force`` are called as each event is set (a uvicorn server polls flags rather
    than awaiting events: see :func:`drain_on_signals`).
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        on_stop: Callable[[], None] | None = None,
        on_force: Callable[[], None] | None = None,
    ) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self._log = logger or log
        self._on_stop = on_stop
        self._on_force = on_force

    def request(self, why: str = "asked to stop") -> None:
        """The first call drains, the second stops at once, any later one does nothing."""
        if not self.stop.is_set():
            self._log.info("%s: draining (send it again to stop at once)", why)
            self.stop.set()
            if self._on_stop is not None:
                self._on_stop()
        elif not self.force.is_set():
            self._log.warning("%s again: stopping at once", why)
            self.force.set()
            if self._on_force is not None:
                self._on_force()

    @contextmanager
    def signals(self, sigs: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
        """Route ``sigs`` to :meth:`request` while inside the block (nothing where the loop cannot
        take signal handlers: not the main thread)."""
        loop = asyncio.get_running_loop()
        added: list[signal.Signals] = []
        try:
            for sig in sigs:
                loop.add_signal_handler(sig, self.request, f"received {sig.name}")
                added.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        try:
            yield
        finally:
            for sig in added:
                loop.remove_signal_handler(sig)


async def serve_http(
    config: Any,
    sock: socket.socket,
    logger: logging.Logger | None = None,
    *,
    ready: Callable[[], None] | None = None,
    on_drain: Callable[[], None] | None = None,
) -> None:
    """Serve uvicorn ``config`` (a ``uvicorn.Config``) on ``sock`` until SIGTERM/SIGINT: the first
    signal stops accepting and finishes open requests, the second stops waiting for them. The process
    then goes on to exit 0 (uvicorn's own handlers would re-raise the signal after shutdown).
    ``ready`` is called once the signal handlers are in place (a service's "serving" line);
    ``on_drain`` with the first signal (the app answers what would outlast the drain: long polls)."""
    from sluice._http_server import HttpServer  # uvicorn loads only in the HTTP services

    server = HttpServer(config)
    with server.on_signals(logger, on_drain).signals():
        if ready is not None:
            ready()
        await server.serve(sockets=[sock])


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
