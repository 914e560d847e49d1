"""Running the producer app: uvicorn's ``Server`` inside ``asyncio.run``, draining on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from sluice.runtime import listen, run, setup_logging
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice_producer._auth import Tokens
from sluice_producer.app import create_app

__all__ = ["serve", "serve_async"]

log = logging.getLogger("sluice.producer")


class _Server(uvicorn.Server):
    """uvicorn's server with loop signal handlers: a signal starts the graceful shutdown (stop
    accepting, finish in-flight requests, close the publisher) and the process then exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        try:
            for sig in sigs:
                loop.add_signal_handler(sig, self._on_signal, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            yield
            return
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        log.info("%s: draining", signal.Signals(sig).name)
        self.handle_exit(sig, None)


async def serve_async(
    settings: Settings,
    registry: Registry | None,
    *,
    host: str,
    port: int,
    strict: bool = False,
    max_batch: int = 10_000,
    auth: Tokens | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. ``auth``: from :func:`sluice_producer._auth.resolve` (which
    refuses a non-loopback bind address without tokens), or None for no authentication."""
    sock = listen(host, port)  # first: a taken port is one line and exit 1, before anything starts
    app = create_app(settings, registry, strict=strict, max_batch=max_batch, auth=auth)
    if auth is None:
        log.info("producer API on %s:%d without authentication", host, port)
    else:
        log.info("producer API on %s:%d: bearer-token auth on (%d tokens)", host, port, len(auth.values))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=max(int(settings.publish_timeout) + 2, 5),
        access_log=False,
    )
    server = _Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()


def serve(
    settings: Settings,
    registry: Registry | None,
    *,
    host: str,
    port: int,
    strict: bool = False,
    max_batch: int = 10_000,
    auth: Tokens | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (uvloop when available)."""
    setup_logging(settings.log_level)
    run(serve_async(settings, registry, host=host, port=port, strict=strict, max_batch=max_batch, auth=auth))
