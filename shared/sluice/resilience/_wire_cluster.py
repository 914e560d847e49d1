"""The hot path's transport on Redis Cluster: :mod:`._wire`'s pre-packed commands, sent to the node that
holds the call's slot, on that node's own connections.

``RedisCluster.execute_command`` adds to the standalone client's layers a command-policy lookup, a slot
computation from the command's key specs, a retry loop and metrics hooks for every call: on a small
machine that doubled the client CPU of a decision. The primitives send few, known commands, so here:

* the slot is the client's (``RedisCluster.keyslot`` of each key: a call whose keys are in several
  slots goes to ``execute_command``, which refuses it as it always did) and the node is the slot's
  primary in the client's own slot map (``nodes_manager.slots_cache``), as the client last learned it;
* a connection is taken from the node's own free list (``ClusterNode.acquire_connection``: no lock, no
  await) and given back after the reply (``ClusterNode.release``), so none is ever held outside the
  client: ``RedisCluster.aclose()`` closes every one, and a node the client drops after a topology
  change has none of ours; a connection the client marked for reconnect (every refresh of the slot map
  marks them) is disconnected before it is used, as ``ClusterNode.execute_command`` does;
* commands are sent and replies read without the connection's socket timeout (put back before the
  connection returns to the node): the caller (``ScriptRunner``) bounds every request with its own
  deadline, as on :mod:`._wire`;
* a batch is split by node: every node's part is sent first, then the replies are read node by node
  (the nodes work at once, no task per node); where a :class:`~._multi.MultiScript` covers a node's
  calls they go as one call of its node script (``allow-cross-slot-keys``), else as a pipeline;
* NOSCRIPT (a promoted replica never saw the script: Redis does not replicate ``SCRIPT LOAD``): the
  script is loaded on that node and the call sent again (it did not run);
* anything that means the slot map is stale or the node is gone -- MOVED, ASK, TRYAGAIN, CLUSTERDOWN, a
  key the node does not hold, a connection error -- answers :data:`REROUTE`: the caller sends that call
  again through the client (``execute_command`` or its pipeline), which follows the redirection,
  refreshes the slot map and retries as it always did (a connection error after the send may mean the
  script ran: the client's own retry makes the same bet). So does every call while the client wants to
  (re)initialize (before its first command, after a connection error).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, Connection

from ._wire import pack

if TYPE_CHECKING:
    from ._multi import MultiScript
    from ._scripts import Call

__all__ = ["REROUTE", "ClusterWire", "cluster_wire_for"]


class _Reroute:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REROUTE"


#: A call's answer when it must go again through the client (see the module docstring).
REROUTE: Any = _Reroute()

#: Error replies that mean "not here, not now": the client knows what to do with them.
_REDIRECTS = (rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError)  # MovedError is an AskError
#: A node script's call error when its keys are not (or no longer) on the node.
_NOT_LOCAL = ("non local key", "slot being migrated", "key in a migrating slot")
#: Raised on the way to a node that is gone or unreachable (MaxConnectionsError is a ConnectionError).
_UNREACHABLE = (rexc.ConnectionError, rexc.TimeoutError, OSError)

_MAX_SLOTS_CACHED = 65_536  # keys whose slot is remembered (a key's slot never changes: only its node)

Part = tuple[ClusterNode, bytes, int]  # a node, packed commands, how many replies


def _supported() -> bool:
    """Does this redis-py have the node pool and reconnect marks used here (8.x does; ``redis>=5.2`` is
    allowed)? Without them a cluster client keeps ``execute_command``."""
    return (
        callable(getattr(ClusterNode, "acquire_connection", None))
        and callable(getattr(ClusterNode, "release", None))
        and not inspect.iscoroutinefunction(ClusterNode.release)
        and callable(getattr(Connection, "should_reconnect", None))
    )


_SUPPORTED = _supported()


def cluster_wire_for(redis: object) -> ClusterWire | None:
    """The lean transport for a :class:`RedisCluster` client; None for any other client (or a redis-py
    without what it needs)."""
    return ClusterWire(redis) if _SUPPORTED and isinstance(redis, RedisCluster) else None


def _rerouted(reply: Any) -> bool:
    if reply is REROUTE or isinstance(reply, _REDIRECTS):
        return True
    return isinstance(reply, rexc.ResponseError) and any(s in str(reply) for s in _NOT_LOCAL)


class ClusterWire:
    """Routes packed script calls by the client's slot map (one instance per ``ScriptRunner``: it keeps
    no connections, only the client)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._slots: dict[str, int] = {}  # key -> slot, for the keys seen lately (bounded: see node())
        self.node_scripts = True  # False once a node could not compile a node script (a Redis before 7.0)
        self.sent = 0  # calls sent to a node here
        self.node_batches = 0  # node scripts sent (each one several calls)
        self.rerouted = 0  # calls handed back to the client

    def node(self, keys: Sequence[str]) -> ClusterNode | None:
        """The primary of ``keys``' slot as the client knows it; None: let the client route it."""
        client = self._client
        if not keys or getattr(
            client, "_initialize", True
        ):  # redis-py's flag: the slot map is missing or suspect
            return None
        slots = self._slots
        slot = -1
        for key in keys:
            s = slots.get(key)
            if s is None:
                if len(slots) >= _MAX_SLOTS_CACHED:
                    slots.clear()
                s = slots[key] = client.keyslot(key)
            if s != slot and slot != -1:
                return None  # cross-slot: execute_command refuses it (RedisClusterException)
            slot = s
        nodes = client.nodes_manager.slots_cache.get(slot)
        return nodes[0] if nodes else None

    async def call(self, node: ClusterNode, packed: bytes, source: str) -> Any:
        """One script call's reply (error replies as values), NOSCRIPT handled; or :data:`REROUTE`.
        Kept flat (:func:`request` inlined): it is the hot path."""
        self.sent += 1
        try:
            conn = node.acquire_connection()
        except _UNREACHABLE:
            self.rerouted += 1
            return REROUTE
        timeout = conn.socket_timeout
        try:
            if conn.should_reconnect():  # type: ignore[no-untyped-call]  # marked by a refresh of the slot map
                await conn.disconnect()
            conn.socket_timeout = None  # the runner's deadline bounds the request
            await conn.send_packed_command(packed, check_health=False)
            reply = await _read(conn)
        except _UNREACHABLE:
            reply = REROUTE
        finally:
            conn.socket_timeout = timeout
            node.release(conn)
        if isinstance(reply, rexc.NoScriptError):
            reply = await self._reloaded(node, packed, source)
        elif _rerouted(reply):
            reply = REROUTE
        if reply is REROUTE:
            self.rerouted += 1
        return reply

    async def _reloaded(self, node: ClusterNode, packed: bytes, source: str) -> Any:
        """After a NOSCRIPT from ``node`` (the call did not run): load the script there and send again."""
        try:
            (loaded,) = await request(node, pack(["SCRIPT", "LOAD", source]))
            if isinstance(loaded, Exception):
                return REROUTE if _rerouted(loaded) else loaded
            (reply,) = await request(node, packed)
        except _UNREACHABLE:
            return REROUTE
        return REROUTE if _rerouted(reply) else reply

    async def run_many(
        self, calls: Sequence[Call], pack_one: Callable[[Call], bytes], multi: MultiScript | None = None
    ) -> list[Any]:
        """Each call's reply (error replies as values) or :data:`REROUTE`, the calls split by node."""
        results: list[Any] = [REROUTE] * len(calls)
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            node = self.node(keys)
            if node is not None:
                by_node.setdefault(node.name, (node, []))[1].append(i)
        parts: list[Part] = []
        scripted: list[bool] = []  # is the part one call of the node script?
        for node, idx in by_node.values():
            mine = [calls[i] for i in idx]
            if multi is not None and self.node_scripts and len(idx) > 1 and multi.covers(mine):
                parts.append((node, multi.pack_node(mine), 1))
                scripted.append(True)
                self.node_batches += 1
            else:
                parts.append((node, b"".join([pack_one(c) for c in mine]), len(idx)))
                scripted.append(False)
        self.sent += sum(len(idx) for _, idx in by_node.values())
        replies = await exchange(parts)
        for (node, packed, _), (_, idx), got, whole in zip(
            parts, by_node.values(), replies, scripted, strict=True
        ):
            if isinstance(got, BaseException):
                continue  # the node is gone or unreachable: its calls go through the client
            if whole:
                assert multi is not None
                reply = got[0]
                if isinstance(reply, rexc.NoScriptError):
                    reply = await self._reloaded(node, packed, multi.node_script.source)
                self._spread(reply, idx, results)
                continue
            for i, reply in zip(idx, got, strict=True):
                if isinstance(reply, rexc.NoScriptError):
                    reply = await self._reloaded(node, pack_one(calls[i]), calls[i][0].source)
                if not _rerouted(reply):
                    results[i] = reply
        self.rerouted += sum(r is REROUTE for r in results)
        return results

    def _spread(self, reply: Any, idx: list[int], results: list[Any]) -> None:
        """A node script's reply over its calls' places."""
        if _rerouted(reply):
            return
        if isinstance(reply, Exception):
            if "compiling" in str(reply):  # no script flags before Redis 7: pipelines from now on
                self.node_scripts = False
                return
            for i in idx:  # refused whole (OOM, BUSY): every call fails with it, as a standalone batch
                results[i] = reply
            return
        for i, r in zip(idx, reply, strict=True):
            if not _rerouted(r):
                results[i] = r


async def request(node: ClusterNode, packed: bytes) -> list[Any]:
    """The reply of one command on one of ``node``'s connections, in a list; raises on a connection
    error (an error reply is a value)."""
    (got,) = await exchange([(node, packed, 1)])
    if isinstance(got, BaseException):
        raise got
    return got


async def exchange(parts: Sequence[Part]) -> list[list[Any] | BaseException]:
    """Send every part on a connection of its node, then read each part's replies: each part's replies,
    or the connection error it met."""
    held: list[tuple[ClusterNode, Connection, float | None] | None] = []
    out: list[list[Any] | BaseException] = []
    try:
        for node, packed, _ in parts:
            try:
                conn = node.acquire_connection()
            except rexc.MaxConnectionsError as exc:
                held.append(None)
                out.append(exc)
                continue
            held.append((node, conn, conn.socket_timeout))
            try:
                if conn.should_reconnect():  # type: ignore[no-untyped-call]  # marked by a refresh of the slot map
                    await conn.disconnect()
                conn.socket_timeout = None  # the runner's deadline bounds the request
                await conn.send_packed_command(packed, check_health=False)
            except _UNREACHABLE as exc:  # redis-py disconnected it: it reconnects on its next send
                out.append(exc)
            else:
                out.append([])
        for n, ((_, _, replies), h) in enumerate(zip(parts, held, strict=True)):
            result = out[n]
            if h is None or not isinstance(result, list):
                continue
            try:
                for _ in range(replies):
                    result.append(await _read(h[1]))
            except _UNREACHABLE as exc:
                out[n] = exc
    finally:
        for h in held:
            if h is not None:
                h[1].socket_timeout = h[2]
                h[0].release(h[1])
    return out


async def _read(conn: AbstractConnection) -> Any:
    try:
        return await conn.read_response(timeout=math.inf)
    except rexc.ResponseError as exc:  # a whole error reply: the connection is still in step
        return exc
