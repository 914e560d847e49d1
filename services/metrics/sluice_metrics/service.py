"""Running the metrics service: bind, serve with uvicorn inside our own loop, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import uvicorn
from prometheus_client.registry import CollectorRegistry

from sluice.errors import ConfigError
from sluice.settings import Settings
from sluice_metrics.app import build_app
from sluice_metrics.collectors import QueueCollector
from sluice_metrics.queue_stats import QueueStatsSource, queues_to_watch

__all__ = ["listen", "run", "serve"]

log = logging.getLogger("sluice.metrics")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` installs loop handlers instead.

    (uvicorn's handlers re-raise the signal after shutdown, which would kill the process with
    SIGTERM instead of letting it exit 0 after a clean drain.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    queues: Sequence[str] = (),
    scrape_timeout: float = 3.0,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` until SIGTERM or SIGINT, then finish open requests and return."""
    watched = queues_to_watch(settings, queues)
    sock = listen(host, port)
    registry = CollectorRegistry()
    collector = QueueCollector()
    registry.register(collector)
    try:
        async with QueueStatsSource(settings, watched, timeout=scrape_timeout) as source:
            app = build_app(registry, source, collector)
            config = uvicorn.Config(
                app,
                lifespan="off",
                access_log=False,
                log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=max(int(scrape_timeout * 2), 5),
            )
            server = _Server(config)
            loop = asyncio.get_running_loop()
            stops = (signal.SIGTERM, signal.SIGINT)
            for sig in stops:
                loop.add_signal_handler(sig, _stop, server, sig)
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            log.info("serving http://%s:%d/metrics; queues: %s", shown, bound_port, ", ".join(watched))
            try:
                await server.serve(sockets=[sock])
            finally:
                for sig in stops:
                    loop.remove_signal_handler(sig)
    finally:
        sock.close()
    log.info("stopped")


def _stop(server: uvicorn.Server, sig: signal.Signals) -> None:
    if server.should_exit and sig == signal.SIGINT:
        server.force_exit = True  # a second Ctrl-C: stop waiting for open requests
    log.info("%s: draining", sig.name)
    server.should_exit = True


def run(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` with uvloop when it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
