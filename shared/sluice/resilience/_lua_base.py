"""What every script is built from: the clock, the TTL, pruning and freeze helpers, GCRA's decision (see
``_lua.py``)."""

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


_FREEZE_OF = """
-- the freeze in `key` (a hash, field u: µs; nil key: none): (its end, nil) while it holds; (nil, its end)
-- once it has ended but its hash still lives (a second past the end); (nil, nil) without one
local function freeze_of(key, now)
  if not key then return nil, nil end
  local u = tonumber(redis.call('HGET', key, 'u'))
  if u and u > now then return u, nil end
  return nil, u
end
"""
_GCRA = """
-- GCRA's decision on the TAT in KEYS[1] (T: µs per unit, tau = burst * T). After a freeze that ended at
-- `ended` the TAT is at least ended + tau - T: the key resumes at the rate (one unit at the end, then one
-- per T), not with the burst its bucket saved up while frozen
local function gcra_decide(now, T, tau, cost, peek, ended)
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat == nil or tat < now then tat = now end
  if ended and tat < ended + tau - T then tat = ended + tau - T end
  local new_tat = tat + T * cost
  local diff = now - (new_tat - tau)
  if diff < 0 then
    local retry = -1
    if T * cost <= tau then retry = math.ceil(-diff) end
    return {ok = string.format('0 %d %d %d %d', retry, math.floor((now - (tat - tau)) / T), math.ceil(tat - now), now)}
  end
  if peek == '0' then
    redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  end
  return {ok = string.format('1 0 %d %d %d', math.floor(diff / T), math.ceil(new_tat - now), now)}
end
"""


def build(name: str, body: str) -> Script:
    """The body with the helpers it uses defined before it (and no others: the hot path stays lean)."""
    pairs = (
        (_NOW, "now_us("),
        (_KEEP, "keep("),
        (_PRUNE, "prune("),
        (_FROZEN, "frozen("),
        (_FREEZE_OF, "freeze_of("),
        (_GCRA, "gcra_decide("),
    )
    helpers = [h for h, fn in pairs if fn in body]
    return Script(name, "".join(helpers) + body)
