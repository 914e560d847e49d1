"""The hot path's transport: pre-packed commands on connections kept out of the client's pool.

redis-py's ``execute_command`` wraps every command in layers (pool checkout and check-in under a
lock, a retry wrapper, observability hooks) that cost more client CPU than the round trip itself on
a small machine. The primitives send few, known commands, so this module does the minimum:

* commands are packed to RESP bytes here, with the constant head of each script call cached;
* connections are checked out of the client's own pool once and kept in a free list shared by
  every primitive on that pool, so they use the client's settings (host, auth, database, TLS,
  protocol) and ``Redis.aclose()`` still closes them; at most 8 are kept idle;
* a connection that failed is disconnected by redis-py and reconnects by itself on its next send;
  a send that meets a dead pooled connection (Redis restarted) is retried once on a fresh socket,
  as ``execute_command`` would;
* error replies come back as redis-py's exceptions (``NoScriptError`` and the rest);
* commands are sent and replies read without the client's socket timeout (while a connection is
  held here its ``socket_timeout`` is off, and put back when it returns to the pool): redis-py
  spends a task and a timer on every timed send, and the caller (``ScriptRunner``) bounds every
  request with its own deadline; the wire is not used without one.

Only a plain ``ConnectionPool`` on a plain ``Redis`` client takes this path (:func:`wire_for`):
a ``BlockingConnectionPool`` must not have connections held out of it, and a single-connection client
keeps ``execute_command``. A ``RedisCluster`` client has its own lean transport, on each node's
connections (:mod:`._wire_cluster`, built on :func:`pack`).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from sluice.redis_client import AnyRedis

__all__ = ["Arg", "Packed", "Wire", "bulk", "pack", "wire_for"]

Arg = str | int | float | bytes


def bulk(arg: Arg) -> bytes:
    """One argument as a RESP bulk string (floats as ``repr``, like redis-py)."""
    if isinstance(arg, str):
        data = arg.encode()
    elif isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, float):
        data = repr(arg).encode()
    else:
        data = str(arg).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


_A = TypeVar("_A", bound=Arg)


class Packed(list[_A]):
    """A call's keys or arguments with their RESP form built once, by whoever made them: ``resp`` is the
    bulk strings of the items, in order. A batch (:class:`~._multi.MultiScript`) sends ``resp`` as it is
    instead of packing each item in turn (one format operation for a hot call's few arguments instead of
    a :func:`bulk` call each); every other path reads it as the plain list it also is. The maker keeps
    the two in step; :func:`packed` builds both from the items."""

    __slots__ = ("resp",)

    def __init__(self, items: Sequence[_A], resp: bytes) -> None:
        super().__init__(items)
        self.resp = resp


def packed(items: Sequence[_A]) -> Packed[_A]:
    """``items`` with their RESP form (see :class:`Packed`)."""
    return Packed(items, b"".join(map(bulk, items)))


def resp_of(items: Sequence[Arg]) -> bytes:
    """The bulk strings of ``items``: the ones built with them if they are :class:`Packed`."""
    return items.resp if type(items) is Packed else b"".join(map(bulk, items))


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(map(bulk, args))


#: One free list per connection pool, shared by every primitive on that client (a cache that dies
#: with the pool, not a global: the pool is the owner).
_WIRES: weakref.WeakKeyDictionary[ConnectionPool, Wire] = weakref.WeakKeyDictionary()


def wire_for(redis: AnyRedis) -> Wire | None:
    """The lean transport for ``redis``, or None where it must keep ``execute_command``."""
    pool = getattr(redis, "connection_pool", None)
    if (
        not isinstance(redis, Redis)
        or redis.single_connection_client
        or not isinstance(pool, ConnectionPool)
        or isinstance(pool, BlockingConnectionPool)
    ):
        return None
    wire = _WIRES.get(pool)
    if wire is None:
        wire = _WIRES[pool] = Wire(pool)
    return wire


class Wire:
    """Sends packed commands and reads their replies, one connection per request in flight.

    Keeps at most 8 connections idle (a sixteenth of a small pool): a request checks its connection
    back in and the next one takes it again at once, so a few are enough, and the client's other
    users keep the rest of the pool;
    when the pool is exhausted while some of its own requests are in flight, a request waits for
    one of those connections instead of failing.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = weakref.ref(pool)
        self._idle: list[AbstractConnection] = []
        self._max_idle = min(8, max(1, pool.max_connections // 16))
        self._busy = 0
        self._timeouts: dict[int, float | None] = {}  # id(conn) -> its socket_timeout, while held here
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def request(self, packed: bytes, replies: int = 1) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and return the replies; error replies as values."""
        self._busy += 1
        try:
            conn = self._idle.pop() if self._idle else await self._checkout()
        except BaseException:
            self._busy -= 1
            raise
        try:
            try:
                await conn.send_packed_command(packed, check_health=False)
                first = await self._read(conn)
            except rexc.ConnectionError:
                # a pooled socket the server closed (restart, idle timeout): once more, reconnected
                await conn.send_packed_command(packed, check_health=False)
                first = await self._read(conn)
            out = [first]
            for _ in range(replies - 1):
                out.append(await self._read(conn))
            return out
        finally:
            # on failure redis-py has disconnected it (a half-read reply is never reused); it
            # reconnects on its next send, so it may stay ours
            self._busy -= 1
            await self._checkin(conn)

    @staticmethod
    async def _read(conn: AbstractConnection) -> Any:
        try:
            # no socket timeout per reply (an asyncio.timeout each, a tenth of a reply's cost): every
            # request here runs under its ScriptRunner's deadline, which bounds the whole round trip
            return await conn.read_response(timeout=math.inf)
        except rexc.ResponseError as exc:  # a whole error reply: the connection is still in step
            return exc

    async def _checkout(self) -> AbstractConnection:
        pool = self._pool()
        if pool is None:
            raise rexc.ConnectionError("the client's connection pool is gone")
        try:
            conn = cast(AbstractConnection, await pool.get_connection())  # type: ignore[no-untyped-call]
        except rexc.MaxConnectionsError:
            if self._busy <= 1:  # none of ours to wait for: the pool is full of others' connections
                raise
        else:
            self._timeouts[id(conn)] = conn.socket_timeout
            # sends without a task and a timer each; the runner's deadline bounds them
            conn.socket_timeout = None
            return conn
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed one just as we were cancelled
                await self._checkin(waiter.result())
            raise

    async def _checkin(self, conn: AbstractConnection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
            return
        await self._release(conn)

    async def _release(self, conn: AbstractConnection) -> None:
        """Back to the pool, with its socket timeout as the pool gave it."""
        conn.socket_timeout = self._timeouts.pop(id(conn), conn.socket_timeout)
        pool = self._pool()
        if pool is not None:
            await pool.release(conn)

    async def aclose(self) -> None:
        """Hand the idle connections back to the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._release(conn)
