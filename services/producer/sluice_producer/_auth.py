"""Bearer-token authentication of the producer API.

Tokens come from ``SLUICE_API_TOKENS`` (comma-separated) and ``SLUICE_API_TOKEN_FILE`` (one a line,
for secrets mounts). ``SLUICE_API_AUTH``: ``on``, ``off``, or ``auto`` (the default): on when a token
is configured or the bind address is not loopback. Auth on without any token refuses to start
(:func:`resolve` raises :class:`~sluice.errors.ConfigError`): the API never runs open by accident.

A request is checked against every configured token with :func:`hmac.compare_digest` (constant time,
and no early exit on the first match), before its body is read. ``/healthz``, ``/readyz`` and the
API's documents (``/openapi.json``, ``/docs``) stay open. Tokens are never logged: only their count.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from sluice.errors import ConfigError
from sluice.settings import TOKEN_CHARS, Settings

__all__ = ["OPEN_PATHS", "SCHEME", "BearerAuth", "Tokens", "is_loopback", "load_tokens", "resolve"]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
SCHEME = "bearerAuth"  # the name of the security scheme in the OpenAPI document
_CHALLENGE = b'Bearer realm="sluice"'

log = logging.getLogger("sluice.producer")


def is_loopback(host: str) -> bool:
    """Does binding to ``host`` keep the port on this machine? (127.0.0.0/8, ::1, localhost)"""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def load_tokens(settings: Settings) -> list[bytes]:
    """Every configured token: ``api_tokens``, then the lines of ``api_token_file`` (blank lines and
    ``#`` comments skipped). A file that cannot be read, or a bad token in it, is a ConfigError that
    names the file and the line, never the token."""
    tokens = [t.get_secret_value().encode() for t in settings.api_tokens]
    path = settings.api_token_file
    if path is None:
        return tokens
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"SLUICE_API_TOKEN_FILE {path}: cannot read it: {why}") from None
    for n, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not TOKEN_CHARS.fullmatch(token):
            raise ConfigError(
                f"SLUICE_API_TOKEN_FILE {path} line {n}: not a bearer token (use A-Z a-z 0-9 -._~+/)"
            )
        tokens.append(token.encode())
    return tokens


@dataclass(frozen=True, slots=True)
class Tokens:
    """The accepted tokens; :meth:`accepts` compares in constant time against all of them."""

    values: tuple[bytes, ...]

    def accepts(self, presented: bytes) -> bool:
        ok = False
        for token in self.values:  # no short cut: the time does not tell which token matched
            ok |= hmac.compare_digest(presented, token)
        return ok

    def __repr__(self) -> str:
        return f"Tokens({len(self.values)} tokens)"


def resolve(settings: Settings, host: str) -> Tokens | None:
    """The tokens to check, or ``None`` when auth is off. Raises ConfigError when auth is on (asked
    for, or ``auto`` on a non-loopback bind address) and no token is configured."""
    if settings.api_auth == "off":
        if settings.api_tokens or settings.api_token_file is not None:
            log.warning("SLUICE_API_AUTH=off: the configured API tokens are not checked")
        return None
    tokens = load_tokens(settings)
    on = settings.api_auth == "on" or bool(tokens) or not is_loopback(host)
    if not on:
        return None
    if not tokens:
        why = "SLUICE_API_AUTH=on" if settings.api_auth == "on" else f"{host} is not a loopback address"
        raise ConfigError(
            f"refusing to serve the producer API on {host} without authentication ({why}): set "
            "SLUICE_API_TOKENS or SLUICE_API_TOKEN_FILE, bind to 127.0.0.1, or set SLUICE_API_AUTH=off "
            "if something in front of it authenticates"
        )
    return Tokens(tuple(dict.fromkeys(tokens)))


def bearer_of(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """ASGI middleware: 401 with ``WWW-Authenticate: Bearer`` unless the request carries a configured
    token; the open paths pass. It runs before the body is read or parsed."""

    def __init__(self, app: ASGIApp, *, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = bearer_of(scope["headers"])
        if presented is None:
            await _challenge(send, "missing bearer token: send the header Authorization: Bearer <token>")
            return
        if not self.tokens.accepts(presented):
            await _challenge(send, "invalid bearer token", error=b"invalid_token")
            return
        await self.app(scope, receive, send)


async def _challenge(send: Send, detail: str, error: bytes | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    challenge = _CHALLENGE + (b', error="' + error + b'"' if error else b"")
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
