"""A task's AMQP properties, marshalled fast and byte for byte as pamqp marshals them.

pamqp (aiormq's codec) encodes a message's properties in pure Python, value by value, through a type
dispatch: about 30 us for a task's properties with its five ``x-sluice-*`` headers, against 11 us with no
headers, on this project's machines. On a bulk publish that is one of the largest costs after the socket
write (docs/benchmarks.md). A task's properties are always the same few - content type, headers (a table
of strings and integers), delivery mode, message id, app id - so :class:`TaskProperties` encodes exactly
those with precompiled structs and hands any other shape (another property set, another value type, a
key too long, pamqp's deprecated-RabbitMQ integer mode) to pamqp's own encoder. No library does this:
pamqp has no faster path and aiormq marshals whatever properties object it is given, which is the seam
used here (``ContentHeader.marshal`` calls ``properties.marshal()``).

tests/core/test_amqp_properties.py checks the output against pamqp's on generated properties.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pamqp import commands, encode

from sluice.errors import SluiceError

__all__ = ["TaskProperties"]

_FLAGS = commands.Basic.Properties.flags
_CONTENT_TYPE = _FLAGS["content_type"]
_HEADERS = _FLAGS["headers"]
_DELIVERY_MODE = _FLAGS["delivery_mode"]
_MESSAGE_ID = _FLAGS["message_id"]
_APP_ID = _FLAGS["app_id"]
# the properties encoded here; any other one set sends the whole object to pamqp
_OTHERS = (
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "timestamp",
    "message_type",
    "user_id",
    "cluster_id",
)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_INTS = (  # pamqp's choice for an integer in a table: the smallest type that holds it, in this order
    (-128, 127, b"b", struct.Struct(">b")),
    (-32768, 32767, b"s", struct.Struct(">h")),
    (0, 65535, b"u", struct.Struct(">H")),
    (-2147483648, 2147483647, b"I", struct.Struct(">i")),
    (0, 4294967295, b"i", struct.Struct(">I")),
    (-9223372036854775808, 9223372036854775807, b"l", struct.Struct(">q")),
)


class _Unsupported(SluiceError):
    """A value this module does not encode: pamqp does it."""


class TaskProperties(commands.Basic.Properties):
    """``Basic.Properties`` whose :meth:`marshal` is fast for a task's usual properties.

    No ``__slots__`` of its own on purpose: pamqp's ``marshal`` walks ``self.__slots__``, which must stay
    the parent's list of properties for the fallback to encode them all.
    """

    def marshal(self) -> bytes:
        if not encode.DEPRECATED_RABBITMQ_SUPPORT:
            try:
                return _marshal(self)
            except _Unsupported:
                pass
        return super().marshal()


def _marshal(p: commands.Basic.Properties) -> bytes:
    for name in _OTHERS:
        value = getattr(p, name)
        if value is not None and value != "":
            raise _Unsupported(name)
    flags = 0
    parts: list[bytes] = []
    # pamqp's order (the properties' slots) and its rule: a property is present unless None or ""
    if (v := p.content_type) is not None and v != "":
        flags |= _CONTENT_TYPE
        parts.append(_short(v))
    if (h := p.headers) is not None:
        flags |= _HEADERS
        parts.append(_table(h))
    if (d := p.delivery_mode) is not None:
        if type(d) is not int or not 0 <= d <= 255:
            raise _Unsupported("delivery_mode")
        flags |= _DELIVERY_MODE
        parts.append(_U8.pack(d))
    if (v := p.message_id) is not None and v != "":
        flags |= _MESSAGE_ID
        parts.append(_short(v))
    if (v := p.app_id) is not None and v != "":
        flags |= _APP_ID
        parts.append(_short(v))
    return _U16.pack(flags) + b"".join(parts)


def _short(value: Any) -> bytes:
    if type(value) is not str:
        raise _Unsupported("not a str")
    raw = _utf8(value)
    if len(raw) > 255:
        raise _Unsupported("too long")
    return _U8.pack(len(raw)) + raw


def _table(table: Mapping[str, Any]) -> bytes:
    if type(table) is not dict:
        raise _Unsupported("not a dict")
    if not table:
        return b"\x00\x00\x00\x00"
    out: list[bytes] = []
    for key, value in sorted(table.items()):
        encoded = _KEYS.get(key)
        if encoded is None:
            encoded = _key(key)
        out.append(encoded)
        kind = type(value)
        if kind is str:
            text = _utf8(value)
            out.append(b"S" + _U32.pack(len(text)) + text)
        elif kind is int:
            out.append(_integer(value))
        else:  # bool, float, None, nested tables...: rare in a task's headers
            raise _Unsupported("value type")
    data = b"".join(out)
    return _U32.pack(len(data)) + data


_KEYS: dict[str, bytes] = {}  # header names, encoded: the same few on every task
_KEYS_MAX = 256


def _key(key: Any) -> bytes:
    raw = _utf8(key) if type(key) is str else b""
    if not raw or len(raw) > 128:  # pamqp truncates long keys (and warns): leave that to it
        raise _Unsupported("key")
    encoded = _U8.pack(len(raw)) + raw
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[key] = encoded
    return encoded


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: pamqp raises its own error for it
        raise _Unsupported("not UTF-8") from None


def _integer(value: int) -> bytes:
    for low, high, tag, packer in _INTS:
        if low <= value <= high:
            return tag + packer.pack(value)
    raise _Unsupported("integer out of range")
