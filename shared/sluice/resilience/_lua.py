"""The Lua scripts: one script per decision, so one decision is one round trip.

Conventions shared by every script:

* ``ARGV[1]`` is the clock override, in microseconds. The library always sends ``""``, which makes
  the script read the server clock (``TIME``); only the test hook ``now_us=`` of the internal
  ``_call`` methods sends a number, so a script can be checked against the reference model on a
  generated schedule. The client clock never decides anything.
* every key a script touches is in ``KEYS`` and carries the same hash tag (see ``keys.py``);
* every write refreshes a TTL (``keep``), so an abandoned name costs no memory for long;
* times are microseconds (doubles; exact for integers below 2**53, about 285 years of µs);
* a rate-limit script takes an optional second key, a freeze (``freeze.py``): while it holds a time
  later than now the script refuses without taking anything and answers that time as ``retry_after``,
  with one more field, ``1`` (frozen), at the end of its reply. Without that key nothing changes.
"""

from __future__ import annotations

from ._lua_base import build as _script
from ._lua_throttle import AIMD, AIMD_SHOW, FREEZE, FREEZE_READ, GCRA_AIMD, SLIDING_LOG, SLIDING_SETTLE
from ._multi import MultiScript

__all__ = [
    "AIMD",
    "AIMD_SHOW",
    "BREAKER_ALLOW",
    "BREAKER_RECORD",
    "BUDGET",
    "CLAIM",
    "CLAIM_COMPLETE",
    "CLAIM_RELEASE",
    "CLAIM_RENEW",
    "FREEZE",
    "FREEZE_READ",
    "GCRA",
    "GCRA_AIMD",
    "LEASE_ACQUIRE",
    "LEASE_RENEW",
    "MULTI",
    "SLIDING_LOG",
    "SLIDING_SETTLE",
    "WINDOW",
]

# The two rate-limit scripts are the hot path: their parameters come as one string and their reply is
# one status reply of integers ('+1 0 99 ...'), which the client reads in one line, several times
# faster than an array reply and without the second read a bulk string takes.

# KEYS: tat [, freeze]. ARGV: now, "T tau cost peek" (T: emission interval in µs per unit, tau = burst*T,
# peek 0/1). Reply: "allowed retry_after_µs(-1: never) remaining reset_after_µs now"; frozen: "0 µs_left 0 0 now 1".
# A freeze that ended (its hash lives a second past its end u) resumes at the rate, not with a burst: the
# TAT is at least u + tau - T, as if the bucket had been emptied at u (one unit at u, then one per T), so
# the fleet does not send `burst` requests at once into an upstream that has just throttled it.
GCRA = _script(
    "gcra",
    """
local now = now_us()
local fz, ended = freeze_of(KEYS[2], now)
if fz then return {ok = string.format('0 %d 0 0 %d 1', math.ceil(fz - now), now)} end
local a, b, c, peek = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+)')
return gcra_decide(now, tonumber(a), tonumber(b), tonumber(c), peek, ended)
""",
)

# KEYS: hash {w: window index, c: count in it, p: count in the one before} [, freeze].
# ARGV: now, "window_µs limit cost peek". Reply: "allowed retry_after_µs(-1: never) remaining now";
# frozen: "0 µs_left 0 now 1".
WINDOW = _script(
    "window",
    """
local now = now_us()
local fz = frozen(now)
if fz then return {ok = string.format('0 %d 0 %d 1', math.ceil(fz - now), now)} end
local a, b, d, peek = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+)')
local w, limit, cost = tonumber(a), tonumber(b), tonumber(d)
local idx = math.floor(now / w)
local v = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local sw = tonumber(v[1])
local c, p = 0, 0
if sw == idx then c, p = tonumber(v[2]), tonumber(v[3])
elseif sw == idx - 1 then p = tonumber(v[2]) end
local elapsed = now - idx * w
local est = p * ((w - elapsed) / w) + c
if est + cost > limit then
  local retry = -1
  if cost <= limit then
    if c + cost > limit then
      retry = (idx + 1) * w - now + math.ceil(w * (1 - (limit - cost) / c))
    else
      retry = math.ceil(w * (1 - (limit - cost - c) / p) - elapsed)
    end
    if retry < 1 then retry = 1 end
  end
  return {ok = string.format('0 %d %d %d', retry, math.max(0, math.floor(limit - est)), now)}
end
if peek == '0' then
  redis.call('HSET', KEYS[1], 'w', idx, 'c', c + cost, 'p', p)
  keep(KEYS[1], (idx + 2) * w - now)
end
return {ok = string.format('1 0 %d %d', math.floor(limit - est - cost), now)}
""",
)

# KEYS: leases (zset member=token, score=expiry µs), fence (last token).
# ARGV: now, limit, lease µs. Reply: granted, token or retry_after µs, holders, now.
LEASE_ACQUIRE = _script(
    "lease_acquire",
    """
local now = now_us()
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.ceil(tonumber(first[2]) - now), n, now}
end
-- fencing tokens grow even when the fence key expired: never below the server clock in µs
local token = math.max((tonumber(redis.call('GET', KEYS[2])) or 0) + 1, now)
redis.call('ZADD', KEYS[1], now + lease, string.format('%d', token))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl = tonumber(last[2]) - now
redis.call('SET', KEYS[2], string.format('%d', token), 'PX', math.ceil(ttl / 1000) + 1000)
keep(KEYS[1], ttl)
return {1, token, n + 1, now}
""",
)

# KEYS: leases. ARGV: now, lease µs, token. Reply: 1 renewed, 0 lost.
LEASE_RENEW = _script(
    "lease_renew",
    """
local now = now_us()
local s = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[3]))
if s == nil or s <= now then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
keep(KEYS[1], tonumber(last[2]) - now)
return 1
""",
)

# KEYS: breaker hash. ARGV: now, permits, trial timeout µs, ttl µs.
# Reply: allowed, trial, retry_after µs, state (0 closed, 1 open, 2 half-open), now.
BREAKER_ALLOW = _script(
    "breaker_allow",
    """
local now = now_us()
local v = redis.call('HMGET', KEYS[1], 'state', 'until', 'permits')
if v[1] ~= 'o' and v[1] ~= 'h' then return {1, 0, 0, 0, now} end
local untl = tonumber(v[2])
if now < untl then
  if v[1] == 'o' then return {0, 0, math.ceil(untl - now), 1, now} end
  local left = tonumber(v[3])
  if left <= 0 then return {0, 0, math.ceil(untl - now), 2, now} end
  redis.call('HSET', KEYS[1], 'permits', left - 1)
  return {1, 1, 0, 2, now}
end
-- the open time is over, or a half-open round stalled (its trial holders died): a new round
redis.call('HSET', KEYS[1], 'state', 'h', 'until', now + tonumber(ARGV[3]), 'permits', tonumber(ARGV[2]) - 1, 'ok', 0)
keep(KEYS[1], tonumber(ARGV[4]))
return {1, 1, 0, 2, now}
""",
)

# KEYS: breaker hash. ARGV: now, success (0/1), trial (0/1), bucket µs, buckets, minimum calls,
# failure-rate threshold, open µs, permits, ttl µs. Reply: state, retry_after µs, now.
BREAKER_RECORD = _script(
    "breaker_record",
    """
local now = now_us()
local success, ttl, open_for = ARGV[2] == '1', tonumber(ARGV[10]), tonumber(ARGV[8])
local state = redis.call('HGET', KEYS[1], 'state')
local function open()
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', 'o', 'until', now + open_for)
  keep(KEYS[1], ttl)
  return {1, open_for, now}
end
if state == 'o' or state == 'h' then
  if ARGV[3] == '1' and state == 'h' then
    if not success then return open() end
    if redis.call('HINCRBY', KEYS[1], 'ok', 1) >= tonumber(ARGV[9]) then
      redis.call('DEL', KEYS[1])
      return {0, 0, now}
    end
  end
  -- a call let through before the state changed: not counted
  local code = 2
  if state == 'o' then code = 1 end
  return {code, math.max(0, math.ceil(tonumber(redis.call('HGET', KEYS[1], 'until')) - now)), now}
end
if ARGV[3] == '1' then return {0, 0, now} end
local b, nb = math.floor(now / tonumber(ARGV[4])), tonumber(ARGV[5])
prune(KEYS[1], b, nb)
redis.call('HINCRBY', KEYS[1], 'n:' .. b, 1)
if not success then redis.call('HINCRBY', KEYS[1], 'f:' .. b, 1) end
local names = {}
for i = b - nb + 1, b do
  names[#names + 1] = 'n:' .. i
  names[#names + 1] = 'f:' .. i
end
local counts = redis.call('HMGET', KEYS[1], unpack(names))
local calls, fails = 0, 0
for i = 1, #counts, 2 do
  calls = calls + (tonumber(counts[i]) or 0)
  fails = fails + (tonumber(counts[i + 1]) or 0)
end
if calls >= tonumber(ARGV[6]) and fails >= tonumber(ARGV[7]) * calls then return open() end
keep(KEYS[1], ttl)
return {0, 0, now}
""",
)

# KEYS: budget hash {c:<second>: calls, r:<second>: retries}. ARGV: now, 'call' or 'retry', calls to add,
# window seconds, ratio, minimum retries per second. Reply: allowed, retries in window, calls in window, now.
BUDGET = _script(
    "budget",
    """
local now = now_us()
local s, win = math.floor(now / 1000000), tonumber(ARGV[4])
prune(KEYS[1], s, win)
if ARGV[2] == 'call' then
  redis.call('HINCRBY', KEYS[1], 'c:' .. s, tonumber(ARGV[3]))
  keep(KEYS[1], win * 1000000)
  return {1, 0, 0, now}
end
local names = {}
for i = s - win + 1, s do
  names[#names + 1] = 'c:' .. i
  names[#names + 1] = 'r:' .. i
end
local counts = redis.call('HMGET', KEYS[1], unpack(names))
local calls, retries = 0, 0
for i = 1, #counts, 2 do
  calls = calls + (tonumber(counts[i]) or 0)
  retries = retries + (tonumber(counts[i + 1]) or 0)
end
if retries + 1 > tonumber(ARGV[5]) * calls + tonumber(ARGV[6]) * win then
  keep(KEYS[1], win * 1000000)  -- prune may have just created the hash (its 'last' field)
  return {0, retries, calls, now}
end
redis.call('HINCRBY', KEYS[1], 'r:' .. s, 1)
keep(KEYS[1], win * 1000000)
return {1, retries + 1, calls, now}
""",
)

# KEYS: claim hash {state: p (in progress) or d (done), token, result}. ARGV: now, token, lease µs.
# Reply: 1 claimed (an integer: one line to read), {2, ms left} in progress, {3, has result, result} done.
CLAIM = _script(
    "claim",
    """
local v = redis.call('HMGET', KEYS[1], 'state', 'result', 'token')
if not v[1] then
  redis.call('HSET', KEYS[1], 'state', 'p', 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 1000))
  return 1
end
-- the same claim sent again (a resend after a lost connection) is still ours
if v[1] == 'p' and v[3] == ARGV[2] then return 1 end
if v[1] == 'p' then return {2, redis.call('PTTL', KEYS[1])} end
if v[2] then return {3, 1, v[2]} end
return {3, 0, ''}
""",
)

# ARGV: now, token, ttl µs, has result (0/1), result. Reply: 1 done, 0 claim lost.
CLAIM_COMPLETE = _script(
    "claim_complete",
    """
local v = redis.call('HMGET', KEYS[1], 'state', 'token')
if v[1] ~= 'p' or v[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'd')
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'result', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 1000))
return 1
""",
)

# ARGV: now, token. Reply: 1 released, 0 claim lost.
CLAIM_RELEASE = _script(
    "claim_release",
    """
local v = redis.call('HMGET', KEYS[1], 'state', 'token')
if v[1] ~= 'p' or v[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
""",
)

# ARGV: now, token, lease µs. Reply: 1 renewed, 0 claim lost.
CLAIM_RENEW = _script(
    "claim_renew",
    """
local v = redis.call('HMGET', KEYS[1], 'state', 'token')
if v[1] ~= 'p' or v[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 1000))
return 1
""",
)

#: Any sequence of the calls a batch carries (rate-limit decisions and claim steps), as one script
#: call: see ``_multi.py``.
MULTI = MultiScript(
    "multi",
    [GCRA, GCRA_AIMD, WINDOW, SLIDING_LOG, SLIDING_SETTLE, CLAIM, CLAIM_COMPLETE, CLAIM_RELEASE, CLAIM_RENEW],
)
