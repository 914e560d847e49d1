"""A handler's return value as the JSON a tracked task stores: :func:`encode_result`.

The task's return annotation is the result's schema (``Task.result_adapter``, a pydantic ``TypeAdapter``
built once by ``@task``). A value pydantic cannot serialise, or whose JSON is over ``max_bytes``, is not
stored: the answer carries the reason instead (recorded as ``result_error``; the task still succeeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import TypeAdapter

__all__ = ["EncodedResult", "encode_result"]


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """``json`` to store, or ``error`` saying why nothing is stored."""

    json: bytes | None
    error: str | None = None


def encode_result(adapter: TypeAdapter[Any] | None, value: Any, max_bytes: int) -> EncodedResult:
    """``value`` as JSON through ``adapter`` (plain pydantic serialisation without one), size-checked."""
    try:
        data = adapter.dump_json(value) if adapter is not None else pydantic_core.to_json(value)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        return EncodedResult(None, f"result not serialisable: {exc}"[:512])
    if len(data) > max_bytes:
        return EncodedResult(None, f"result too large: {len(data)} bytes > {max_bytes}")
    return EncodedResult(data)
