"""Key layout: ``<prefix>:<kind>:{<name>}[:<part>...]``.

The ``{name}`` part is a Redis Cluster hash tag: every key a primitive's script touches for one
name (a GCRA bucket, a semaphore's lease set and its fencing counter, ...) shares it, so each
script touches one cluster slot. Different names spread over the slots.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.errors import ConfigError

__all__ = ["KeySpace"]


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Where a primitive keeps its keys. ``prefix`` separates applications or tests sharing a Redis."""

    prefix: str = "sluice"

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ConfigError(f"key prefix must be non-empty and free of braces: {self.prefix!r}")

    def key(self, kind: str, name: str, *parts: str) -> str:
        """The key for ``name`` of a primitive ``kind``; ``parts`` tell its several keys apart."""
        if not name:
            raise ConfigError("a limit name must not be empty")
        return ":".join((self.prefix, kind, "{" + name + "}", *parts))
