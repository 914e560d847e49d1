"""The scripts of issue 14's limits: the exact sliding log, freezes, the adaptive (AIMD) rate and GCRA at it.

Same conventions as every script (``_lua.py``): ``ARGV[1]`` is the test-only clock override, every key
is in ``KEYS`` under one hash tag, every write keeps a TTL, times are microseconds.
"""

from __future__ import annotations

from ._lua_base import build as _script

__all__ = ["AIMD", "AIMD_SHOW", "FREEZE", "FREEZE_READ", "GCRA_AIMD", "SLIDING_LOG", "SLIDING_SETTLE"]

# KEYS: log (zset: one member '<stamp>:<k>' per unit admitted, scored by its stamp, µs) [, freeze].
# ARGV: now, "period_µs limit cost peek". Reply: "allowed retry_after_µs(-1: never) remaining stamp";
# frozen: "0 µs_left 0 now 1". The stamp t is the decision's time: the server clock, never below the
# newest stamp in the log (so stamps never go back, even if the server clock does; the log keeps what is
# within a period of its newest stamp). An entry counts while its stamp s >= t - period (a closed
# window): it leaves at s + period + 1, which is retry_after.
SLIDING_LOG = _script(
    "sliding_log",
    """
local now = now_us()
local fz = frozen(now)
if fz then return {ok = string.format('0 %d 0 %d 1', math.ceil(fz - now), now)} end
local a, b, c, peek = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+)')
local p, limit, cost = tonumber(a), tonumber(b), tonumber(c)
local t = now
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local newest = tonumber(last[2])
local n = 0
if newest then
  if newest > t then t = newest end
  -- drop what left the window of the newest stamp: no later decision can count it (t never goes below
  -- the newest stamp); count what is in this decision's window
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', newest - p))
  n = redis.call('ZCOUNT', KEYS[1], string.format('%d', t - p), '+inf')
end
if n + cost > limit then
  local retry = -1
  if cost <= limit then
    -- the in-window entries are the last n: enough of the oldest of them must leave
    local i = redis.call('ZCARD', KEYS[1]) + cost - limit - 1
    local e = redis.call('ZRANGE', KEYS[1], i, i, 'WITHSCORES')
    retry = tonumber(e[2]) + p + 1 - t
  end
  return {ok = string.format('0 %d %d %d', retry, math.max(0, limit - n), t)}
end
if peek == '0' and cost > 0 then
  local ts = string.format('%d', t)
  local k = 0
  if newest == t then k = redis.call('ZCOUNT', KEYS[1], ts, ts) end
  local i = 0
  while i < cost do
    local args = {}
    for j = i, math.min(cost, i + 500) - 1 do
      args[#args + 1] = ts
      args[#args + 1] = ts .. ':' .. (k + j)
    end
    redis.call('ZADD', KEYS[1], unpack(args))
    i = i + 500
  end
  keep(KEYS[1], t + p - now)
end
return {ok = string.format('1 0 %d %d', limit - n - cost, t)}
""",
)

# KEYS: log. ARGV: now, "stamp margin_µs window_µs". A unit admitted at ``stamp`` whose call ended now:
# one member stamped ``stamp`` (any: they are alike) is stamped again ``t - margin`` (t the decision
# clock: the server's, never below the newest stamp; the new stamp never below ``stamp``), so it counts a
# full period from now, when its request had surely arrived upstream. Gone already (the call outlasted
# the window), one is added at that stamp all the same: the window counts it once more, stricter, never
# looser. Reply: "found(1/0) new_stamp".
SLIDING_SETTLE = _script(
    "sliding_settle",
    """
local now = now_us()
local a, b, c = string.match(ARGV[2], '(%S+) (%S+) (%S+)')
local stamp, margin, p = tonumber(a), tonumber(b), tonumber(c)
local t = now
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local newest = tonumber(last[2]) or t
if newest > t then t = newest end
local s = math.max(stamp, t - margin)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], a, a, 'LIMIT', 0, 1)[1]
if found and s == stamp then return {ok = string.format('1 %d', s)} end
local ss = string.format('%d', s)
local m
if found then
  redis.call('ZREM', KEYS[1], found)
  m = ss .. ':s' .. found
else
  m = ss .. ':s' .. a
  local i = 0
  while redis.call('ZSCORE', KEYS[1], m .. ':' .. i) do i = i + 1 end
  m = m .. ':' .. i
end
redis.call('ZADD', KEYS[1], ss, m)
keep(KEYS[1], math.max(s, newest) + p - now)
return {ok = string.format('%d %d', found and 1 or 0, s)}
""",
)

# KEYS: freeze hash {u: until µs, r: reason, c: freezes counted}. ARGV: now, µs from now, reason.
# Keeps the later of the two ends (and its reason). Reply: extended (0/1), until µs (0: none), count,
# reason of the end in force, now.
FREEZE = _script(
    "freeze",
    """
local now = now_us()
local u = now + tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'u', 'c', 'r')
local cur, count = tonumber(v[1]), tonumber(v[2]) or 0
if cur and cur <= now then cur, count = nil, 0 end
if u <= now or (cur and cur >= u) then
  if cur then
    redis.call('HSET', KEYS[1], 'c', count + 1)
    return {0, cur, count + 1, v[3] or '', now}
  end
  return {0, 0, 0, '', now}
end
redis.call('HSET', KEYS[1], 'u', string.format('%d', u), 'r', ARGV[3], 'c', count + 1)
keep(KEYS[1], u - now)  -- a second past its end, like every key (a read checks the end itself)
return {1, u, count + 1, ARGV[3], now}
""",
)

# KEYS: freeze hash. ARGV: now. Reply: until µs (0: not frozen), count, reason, now.
FREEZE_READ = _script(
    "freeze_read",
    """
local now = now_us()
local v = redis.call('HMGET', KEYS[1], 'u', 'c', 'r')
local u = tonumber(v[1])
if not u or u <= now then return {0, 0, '', now} end
return {u, tonumber(v[2]) or 0, v[3] or '', now}
""",
)

# KEYS: hash {r: effective rate (units per period), t: start of the current quiet run µs, c: last cut µs}.
# ARGV: now, "mode declared floor factor step interval_µs cooldown_µs" (mode 's': a throttle signal,
# 'r': read only). Quiet intervals since t each add `step` (up to `declared`); a signal restarts the
# quiet run and, unless the last cut is within `cooldown`, cuts: rate = max(floor, rate * factor).
# No key: the declared rate. Reply: "rate(%.17g) cut(0/1) now". ARGV[3], optional: "declared step
# interval_µs period_µs", kept in the hash by a signal (field d) for readers that know no parameters
# (AIMD_SHOW: sluice limits ls, the metrics).
AIMD = _script(
    "aimd",
    """
local now = now_us()
local mode, a, b, c, d, e, f = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)')
local top, floor, factor, step = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
local interval, cooldown = tonumber(e), tonumber(f)
local v = redis.call('HMGET', KEYS[1], 'r', 't', 'c')
local r, t, cut_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
if r == nil or t == nil then r, t, cut_at = top, now, nil end
if now > t then
  local k = math.floor((now - t) / interval)
  if k > 0 then
    r = r + k * step
    t = t + k * interval
  end
end
if r > top then r = top end
if mode == 'r' then return {ok = string.format('%.17g 0 %d', r, now)} end
local cut = 0
if cut_at == nil or now - cut_at >= cooldown then
  r = r * factor
  if r < floor then r = floor end
  cut_at, cut = now, 1
end
t = now
redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r), 't', string.format('%d', t), 'c', string.format('%d', cut_at))
if ARGV[3] then redis.call('HSET', KEYS[1], 'd', ARGV[3]) end
local back = t + math.ceil((top - r) / step) * interval
if cut_at + cooldown > back then back = cut_at + cooldown end
keep(KEYS[1], back - now)
return {ok = string.format('%.17g %d %d', r, cut, now)}
""",
)

# GCRA at the adaptive rate: the GCRA script (``_lua.py``) whose emission interval is the AIMD hash's
# effective rate now (read as the AIMD script's 'r' mode reads it: no hash is the declared rate), so
# every worker admits at the rate the fleet's throttles left, in the decision's own round trip.
# KEYS: tat, aimd hash [, freeze]. ARGV: now, "period_µs burst cost peek declared step interval_µs".
# T = period / rate; the burst scales with the rate (burst * rate / declared units), so tau = period *
# burst / declared stays what it is at the declared rate and a TAT set at one rate is right at another.
# Reply: the GCRA script's; frozen: "0 µs_left 0 0 now 1"; a freeze that ended resumes at the rate, as
# in the GCRA script.
GCRA_AIMD = _script(
    "gcra_aimd",
    """
local now = now_us()
local fz, ended = freeze_of(KEYS[3], now)
if fz then return {ok = string.format('0 %d 0 0 %d 1', math.ceil(fz - now), now)} end
local a, b, c, peek, d, e, f = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)')
local P, burst, cost = tonumber(a), tonumber(b), tonumber(c)
local top, step, interval = tonumber(d), tonumber(e), tonumber(f)
local v = redis.call('HMGET', KEYS[2], 'r', 't')
local r, t = tonumber(v[1]), tonumber(v[2])
if r == nil or t == nil then r, t = top, now end
if now > t then
  local k = math.floor((now - t) / interval)
  if k > 0 then r = r + k * step end
end
if r > top then r = top end
return gcra_decide(now, P / r, P * burst / top, cost, peek, ended)
""",
)

# KEYS: AIMD hashes. ARGV: now. Each hash's effective rate now, by the parameters its last signal kept
# (field d), as the 'r' mode of AIMD reads it. Reply: one "rate(%.17g) declared period_µs" per key,
# "" for a key that is gone or keeps no parameters.
AIMD_SHOW = _script(
    "aimd_show",
    """
local now = now_us()
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'r', 't', 'd')
  local r, t = tonumber(v[1]), tonumber(v[2])
  out[i] = ''
  if r and t and v[3] then
    local a, b, c, d = string.match(v[3], '(%S+) (%S+) (%S+) (%S+)')
    local top, step, interval = tonumber(a), tonumber(b), tonumber(c)
    if now > t then
      local k = math.floor((now - t) / interval)
      if k > 0 then r = r + k * step end
    end
    if r > top then r = top end
    out[i] = string.format('%.17g %s %s', r, a, d)
  end
end
return out
""",
)
