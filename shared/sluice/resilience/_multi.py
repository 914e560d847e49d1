"""Many script calls as one script call: a batch is one ``EVALSHA`` instead of a pipeline of them.

A pipeline of ``n`` script calls still costs Redis ``n`` command dispatches and the client ``n``
replies to read. :class:`MultiScript` is generated from the single scripts themselves: each one's
source becomes the body of a Lua function whose parameters are named ``KEYS`` and ``ARGV``, so the
body reads its own keys and arguments exactly as it does when it runs alone (the helpers it uses
are inside the function too). The dispatcher runs the calls in order and answers one array, one
element per call; an error in one call (``redis.call`` failing, a bug) comes back as that call's
error reply, and the calls after it still run, as in a pipeline.

Argument layout: ``KEYS`` are every call's keys in order; ``ARGV`` is, for each call, its script's
number, its key count, its argument count, then its arguments.

The keys of one batch belong to different calls and so to different hash slots: as a declared-keys
script a batch may only go to a standalone server. On Redis Cluster a batch is split by node and each
node's part is one call of :attr:`MultiScript.node_script` (``pack_node``): the same functions, every
call's keys passed in ``ARGV`` (for each call: its script's number, key count, argument count, keys,
arguments) and no declared keys, under the Redis 7 flag ``allow-cross-slot-keys``, which lets a script
touch keys of many slots as long as the node holds them all. A key the node does not hold (its slot
moved since the client learned the map) fails that call alone (``Script attempted to access a non
local key``) before it touched anything: every key of one call shares one hash tag, so the call's first
access fails. :mod:`._wire_cluster` sends such a call again through the client, which follows the
redirection.
"""

from __future__ import annotations

from collections.abc import Sequence

from sluice.errors import ConfigError

from ._scripts import Call, Script
from ._wire import bulk, resp_of

__all__ = ["MultiScript"]

#: Each call's keys and arguments taken, its function runs under pcall: an error is that call's reply.
_CALL = """
  local ok, r = pcall(ops[op], keys, args)
  if not ok then
    if type(r) == 'table' and r.err then r = {err = r.err} else r = {err = tostring(r)} end
  elseif r == nil then
    r = false
  end
  out[i] = r
end
return out
"""

#: Keys from ``KEYS`` (declared: one server), arguments from ``ARGV``.
_DISPATCH = (
    """
local out, a, k, i, n = {}, 1, 0, 0, #ARGV
while a <= n do
  local op, nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do args[j] = ARGV[a + 2 + j] end
  k, a, i = k + nk, a + 3 + na, i + 1"""
    + _CALL
)

#: Keys and arguments from ``ARGV`` (no declared keys: a cluster node's many slots).
_DISPATCH_NODE = (
    """
local out, a, i, n = {}, 1, 0, #ARGV
while a <= n do
  local op, nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = ARGV[a + 2 + j] end
  for j = 1, na do args[j] = ARGV[a + 2 + nk + j] end
  a, i = a + 3 + nk + na, i + 1"""
    + _CALL
)

#: The node script's first line: Redis 7 script flags (a script with a shebang is no longer a legacy one)
_NODE_FLAGS = "#!lua flags=allow-cross-slot-keys\n"


class MultiScript:
    """One script that runs any sequence of calls to ``scripts`` (see the module docstring)."""

    def __init__(self, name: str, scripts: Sequence[Script]) -> None:
        self._number = {s.sha: i + 1 for i, s in enumerate(scripts)}
        if len(self._number) != len(scripts):
            raise ConfigError("a script is listed twice")
        ops = "".join(f"-- {s.name}\nfunction(KEYS, ARGV)\n{s.source}\nend,\n" for s in scripts)
        self.script = Script(name, f"local ops = {{\n{ops}}}\n{_DISPATCH}")
        self.node_script = Script(name + "-node", f"{_NODE_FLAGS}local ops = {{\n{ops}}}\n{_DISPATCH_NODE}")
        self._head = bulk("EVALSHA") + bulk(self.script.sha)
        self._node_head = bulk("EVALSHA") + bulk(self.node_script.sha) + bulk(0)
        self._codes: dict[tuple[str, int, int], bytes] = {}

    def covers(self, calls: Sequence[Call]) -> bool:
        """Can every one of ``calls`` go in one batch?"""
        number = self._number
        return all(script.sha in number for script, _, _ in calls)

    def _code(self, script: Script, ks: Sequence[str], avs: Sequence[object]) -> bytes:
        """A call's script number, key count and argument count in RESP (cached by shape)."""
        shape = (script.sha, len(ks), len(avs))
        code = self._codes.get(shape)
        if code is None:
            code = self._codes[shape] = bulk(self._number[script.sha]) + bulk(len(ks)) + bulk(len(avs))
        return code

    def pack(self, calls: Sequence[Call]) -> bytes:
        """``EVALSHA`` of the batch in RESP (the caller checked :meth:`covers`)."""
        keys: list[bytes] = []
        args: list[bytes] = []
        nkeys = count = 0
        for script, ks, avs in calls:
            keys.append(resp_of(ks))
            args.append(self._code(script, ks, avs))
            args.append(resp_of(avs))
            nkeys += len(ks)
            count += 3 + len(avs)
        head = b"*%d\r\n" % (3 + nkeys + count) + self._head + bulk(nkeys)
        return head + b"".join(keys) + b"".join(args)

    def pack_node(self, calls: Sequence[Call]) -> bytes:
        """``EVALSHA`` of :attr:`node_script` for the batch in RESP: no declared keys, each call's keys in
        ``ARGV`` (the caller checked :meth:`covers`, and that one node holds every key)."""
        parts: list[bytes] = []
        count = 0
        for script, ks, avs in calls:
            parts.append(self._code(script, ks, avs))
            parts.append(resp_of(ks))
            parts.append(resp_of(avs))
            count += 3 + len(ks) + len(avs)
        return b"*%d\r\n" % (3 + count) + self._node_head + b"".join(parts)
