"""The task handles' Lua scripts: one script per write, so each write is one atomic step in one slot.

Conventions (as in ``sluice.resilience._lua``): ``ARGV[1]`` is the clock override in ms; the library
sends ``""`` and the script reads Redis' ``TIME`` (a test may send a number). Every key a script
touches is in ``KEYS`` and shares one hash tag; every write sets a TTL.
"""

from __future__ import annotations

from sluice.resilience._multi import MultiScript
from sluice.resilience._scripts import Script

__all__ = [
    "CANCEL_MARK",
    "CANCEL_RULE",
    "CANCEL_SET",
    "HISTORY_CAP",
    "MULTI",
    "REPLAY",
    "UNIQUE_CLAIM",
    "UNIQUE_RELEASE",
    "WRITE",
]

#: History entries kept per task (the oldest are dropped).
HISTORY_CAP = 50

_NOW = """
local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
_HISTORY = """
local function entry(state, now, attempt, detail) return cjson.encode({state, now, attempt, detail}) end
local function keep(key, cap, ttl, ...)
  if redis.call('RPUSH', key, ...) > cap then redis.call('LTRIM', key, -cap, -1) end
  redis.call('PEXPIRE', key, ttl)
end
local function remember(key, cap, state, now, attempt, detail, ttl)
  keep(key, cap, ttl, entry(state, now, attempt, detail))
end
"""
_TERMINAL = """
local terminal = {succeeded = true, failed = true, dead = true, cancelled = true}
"""

# KEYS: record, history. ARGV: now, "state gen attempt rank ttl_ms stamp [ran_ms]" (stamp: 'started',
# 'finished' or '-'; ran_ms: this write also stands for the attempt's 'running' write, folded into it by
# the worker because it had not been sent yet: 'started' is stamped ran_ms before now and the history
# gets that 'running' entry first), id, ended channel ('' none), history detail, fields (JSON object of
# strings: set, '' deletes), info (JSON object: set only where absent: the task's name, queue, ...), and
# optionally the result (raw JSON bytes, '' deletes it). Few arguments: packing each one costs the client
# more than the script's cjson.decode costs Redis. Reply: 1 applied, 0 ignored.
# One exception to the order: a record CANCEL_MARK cancelled before it knew the task was running ('marked':
# the attempt it saw) takes the worker's writes of that generation and attempt that prove the task ran (its
# 'running' write, or a write with ran_ms): a cancel that raced the task's start must not hide what the
# task then did (its handler may have finished before the cancel reached it).
WRITE = Script(
    "handles-write",
    _NOW
    + _HISTORY
    + """
local state, sg, sa, sr, sttl, stamp, ran = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(%d*)')
local ng, na, nr = tonumber(sg), tonumber(sa), tonumber(sr)
local v = redis.call('HMGET', KEYS[1], 'gen', 'attempt', 'rank', 'marked')
local g, a, r = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
local set = {'state', state, 'gen', ng, 'attempt', na, 'rank', nr}
local raced = false
if g then
  for name, value in pairs(cjson.decode(ARGV[7])) do redis.call('HSETNX', KEYS[1], name, value) end
  raced = v[4] and ng == g and na >= tonumber(v[4]) and (nr == 2 or ran ~= '')
  if not raced then
    if ng < g then return 0 end
    if ng == g and (r >= 4 or na < a or (na == a and nr < r)) then return 0 end
  end
else  -- a new record: its info goes in with the rest, and it has nothing to delete
  for name, value in pairs(cjson.decode(ARGV[7])) do set[#set + 1] = name; set[#set + 1] = value end
end
local now = now_ms()
if stamp ~= '-' then set[#set + 1] = stamp; set[#set + 1] = now end
local fields = cjson.decode(ARGV[6])
local started = nil
if ran ~= '' then
  started = now - tonumber(ran)
  set[#set + 1] = 'started'; set[#set + 1] = started
end
local gone = {}
if raced then gone[1] = 'marked' end
for name, value in pairs(fields) do
  if value == '' then gone[#gone + 1] = name
  else set[#set + 1] = name; set[#set + 1] = value end
end
if ARGV[8] then
  if ARGV[8] == '' then gone[#gone + 1] = 'result'
  else set[#set + 1] = 'result'; set[#set + 1] = ARGV[8] end
end
if g and #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
redis.call('HSET', KEYS[1], unpack(set))
local ttl = tonumber(sttl)
redis.call('PEXPIRE', KEYS[1], ttl)
local last = entry(state, now, na, ARGV[5])
if started then
  keep(KEYS[2], """
    + str(HISTORY_CAP)
    + """, ttl, entry('running', started, na, fields.worker or ''), last)
else
  keep(KEYS[2], """
    + str(HISTORY_CAP)
    + """, ttl, last)
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[3]) end
return 1
""",
)

# KEYS: record, history. ARGV: now, ttl_ms (terminal), history cap, ended channel, id.
# Reply: the state found ('unknown' for none). Queued, deferred, retrying or unknown -> cancelled;
# running -> cancel flag set (the worker finishes it); terminal -> unchanged.
CANCEL_MARK = Script(
    "handles-cancel-mark",
    _NOW
    + _HISTORY
    + _TERMINAL
    + """
local v = redis.call('HMGET', KEYS[1], 'state', 'gen', 'attempt')
local st = v[1]
if st and terminal[st] then return st end
local now = now_ms()
local attempt = tonumber(v[3]) or 0
local cap = tonumber(ARGV[3])
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  local left = redis.call('PTTL', KEYS[1])
  if left < 1 then left = tonumber(ARGV[2]) end
  remember(KEYS[2], cap, 'running', now, attempt, 'cancel requested', left)
  return st
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'rank', 4, 'cancel', '1', 'finished', now,
  'gen', tonumber(v[2]) or 0, 'attempt', attempt, 'marked', attempt)
redis.call('HDEL', KEYS[1], 'next')
redis.call('PEXPIRE', KEYS[1], ttl)
remember(KEYS[2], cap, 'cancelled', now, attempt, 'cancelled while ' .. (st or 'unknown'), ttl)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return st or 'unknown'
""",
)

# KEYS: cancels (sorted set). ARGV: now, ttl_ms, cancel channel, ids... Reply: the cancels' expiry (ms).
CANCEL_SET = Script(
    "handles-cancel-set",
    _NOW
    + """
local now = now_ms()
local exp = now + tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[i]) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(last[2])) + 1000)
for i = 4, #ARGV do redis.call('PUBLISH', ARGV[3], ARGV[i]) end
return exp
""",
)

# KEYS: cancel rules (hash). ARGV: now, ttl_ms, cancel channel, task, before_ms. Reply: the rule's expiry.
CANCEL_RULE = Script(
    "handles-cancel-rule",
    _NOW
    + """
local now = now_ms()
local exp = now + tonumber(ARGV[2])
local before = tonumber(ARGV[5])
local last = exp
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local rule = cjson.decode(all[i + 1])
  if rule.expires_ms <= now then redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] == ARGV[4] then before = math.max(before, rule.before_ms)
  elseif rule.expires_ms > last then last = rule.expires_ms end
end
redis.call('HSET', KEYS[1], ARGV[4], string.format('{"before_ms":%d,"expires_ms":%d}', before, exp))
redis.call('PEXPIREAT', KEYS[1], math.floor(last) + 1000)
redis.call('PUBLISH', ARGV[3], 'rule:' .. ARGV[4])
return exp
""",
)

# KEYS: record, history. ARGV: now, ttl_ms, history cap. Reply: the new generation.
REPLAY = Script(
    "handles-replay",
    _NOW
    + _HISTORY
    + """
local ng = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'queued', 'gen', ng, 'attempt', 1, 'rank', 0)
redis.call('HDEL', KEYS[1], 'started', 'finished', 'next', 'reason', 'result', 'result_error', 'cancel',
  'marked')
redis.call('PEXPIRE', KEYS[1], ttl)
remember(KEYS[2], tonumber(ARGV[3]), 'queued', now, 1, 'replayed (generation ' .. ng .. ')', ttl)
return ng
""",
)

# KEYS: unique key. ARGV: task id, ttl_ms. Reply: nil when the key is now the id's, else the holder's id.
UNIQUE_CLAIM = Script(
    "handles-unique-claim",
    """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
""",
)

# KEYS: unique key. ARGV: task id. Reply: 1 released, 0 held by another id (or free).
UNIQUE_RELEASE = Script(
    "handles-unique-release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

#: A batch of these (the tracker's writes and releases, the producer's queued records, a cancel) is one
#: script call on a standalone server (sluice.resilience._multi): one dispatch, one reply.
MULTI = MultiScript("handles-multi", [WRITE, UNIQUE_RELEASE, CANCEL_SET, CANCEL_MARK])
