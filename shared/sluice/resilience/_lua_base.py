"""What every script is built from: the clock, the TTL, pruning and freeze helpers (see ``_lua.py``)."""

from __future__ import annotations

from ._scripts import Script

__all__ = ["build"]

_NOW = """
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""
_KEEP = """
local function keep(key, ttl_us)
  redis.call('PEXPIRE', key, math.ceil(ttl_us / 1000) + 1000)
end
"""
_PRUNE = """
-- drop hash fields named '<x>:<bucket>' whose bucket left the window, once per new bucket
local function prune(key, bucket, span)
  if tonumber(redis.call('HGET', key, 'last')) == bucket then return end
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local fb = tonumber(string.sub(f, 3))
    if fb and fb <= bucket - span then redis.call('HDEL', key, f) end
  end
  redis.call('HSET', key, 'last', bucket)
end
"""


_FROZEN = """
-- the end of the freeze in KEYS[2] (a hash, field u: µs), if there is one and it is later than now
local function frozen(now)
  if not KEYS[2] then return nil end
  local u = tonumber(redis.call('HGET', KEYS[2], 'u'))
  if u and u > now then return u end
  return nil
end
"""


def build(name: str, body: str) -> Script:
    """The body with the helpers it uses defined before it (and no others: the hot path stays lean)."""
    pairs = ((_NOW, "now_us("), (_KEEP, "keep("), (_PRUNE, "prune("), (_FROZEN, "frozen("))
    helpers = [h for h, fn in pairs if fn in body]
    return Script(name, "".join(helpers) + body)
