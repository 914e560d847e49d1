"""Running the producer app: uvicorn inside the service runtime (:mod:`sluice.runtime`): a signal starts
the graceful shutdown (stop accepting, finish in-flight requests, close the publisher), then exit 0."""

from __future__ import annotations

import logging
from typing import Required, TypedDict, Unpack

import uvicorn

from sluice.runtime import listen, run, serve_http, setup_logging
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice_producer._auth import Tokens
from sluice_producer.app import create_app
from sluice_producer.tasks_api import DEFAULT_MAX_WAIT

__all__ = ["ServeOptions", "serve", "serve_async"]

log = logging.getLogger("sluice.producer")


async def serve_async(
    settings: Settings,
    registry: Registry | None,
    *,
    host: str,
    port: int,
    strict: bool = False,
    max_batch: int = 10_000,
    auth: Tokens | None = None,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> None:
    """Serve until SIGTERM or SIGINT. ``auth``: from :func:`sluice_producer._auth.resolve` (which
    refuses a non-loopback bind address without tokens), or None for no authentication."""
    sock = listen(host, port)  # first: a taken port is one line and exit 1, before anything starts
    app = create_app(settings, registry, strict=strict, max_batch=max_batch, auth=auth, max_wait=max_wait)
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
    try:
        await serve_http(config, sock, log, on_drain=app.state.draining.set)
    finally:
        sock.close()


class ServeOptions(TypedDict, total=False):
    """The keywords :func:`serve` passes on to :func:`serve_async` (its signature says the defaults)."""

    host: Required[str]
    port: Required[int]
    strict: bool
    max_batch: int
    auth: Tokens | None
    max_wait: float


def serve(settings: Settings, registry: Registry | None, **options: Unpack[ServeOptions]) -> None:
    """:func:`serve_async` in the service runtime, until SIGTERM or SIGINT (uvloop when available)."""
    setup_logging(settings.log_level)
    run(serve_async(settings, registry, **options))
