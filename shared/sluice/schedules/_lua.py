"""The schedule store's Lua scripts: each decision is one atomic step whose double run is harmless (redis-py
may send a command again after a connection error).

Every key shares the hash tag ``{sched}`` (one Redis Cluster slot: a script touches the lease and a
schedule's state together). The leader lease's value is ``<instance>|<token>``; the token comes from a
counter that only grows (the fencing token).
"""

from __future__ import annotations

from sluice.resilience._scripts import Script

__all__ = ["ACQUIRE", "CLAIM", "RECORD", "RELEASE", "SAVE", "SKIP", "STATES"]

# KEYS: leader, epoch. ARGV: instance, lease_ms. Reply: {held 0/1, token, holder}.
ACQUIRE = Script(
    "sched-acquire",
    """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, tok = string.match(cur, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(tok), holder}
  end
  return {0, tonumber(tok) or 0, holder or cur}
end
local tok = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. tok, 'PX', ARGV[2])
return {1, tok, ARGV[1]}
""",
)

# KEYS: leader. ARGV: lease value. Reply: 1 released, 0 not ours.
RELEASE = Script(
    "sched-release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

# KEYS: leader, state. ARGV: lease value, occurrence ms.
# Reply: -1 not the leader (fenced), -2 paused or removed, 0 fired already, 1 claimed, 2 claimed from a
# previous holder that never recorded it (it may have been published: sent again with the same id).
CLAIM = Script(
    "sched-claim",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local st = redis.call('HMGET', KEYS[2], 'cursor', 'pending', 'pending_by', 'paused', 'sig')
if not st[5] or st[4] then return -2 end
local occ = tonumber(ARGV[2])
if st[1] and occ <= tonumber(st[1]) then return 0 end
if st[2] and tonumber(st[2]) == occ then
  if st[3] == ARGV[1] then return 1 end
  redis.call('HSET', KEYS[2], 'pending_by', ARGV[1])
  return 2
end
redis.call('HSET', KEYS[2], 'pending', occ, 'pending_by', ARGV[1])
return 1
""",
)

# KEYS: state. ARGV: occurrence ms, task id, fired at ms, caught up (1: a missed occurrence fired late by
# the catch-up policy), skipped (missed occurrences the policy dropped for this fire). The publish was
# confirmed: record it whoever leads now; the counters move only with the cursor (a second record of one
# occurrence counts nothing). Reply: 1 the cursor moved, 0 a later occurrence was recorded already.
RECORD = Script(
    "sched-record",
    """
local occ = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'cursor', 'pending', 'sig')
if not st[3] then return 0 end
if st[2] and tonumber(st[2]) == occ then redis.call('HDEL', KEYS[1], 'pending', 'pending_by') end
if st[1] and occ <= tonumber(st[1]) then return 0 end
redis.call('HSET', KEYS[1], 'cursor', occ, 'last_occurrence', occ, 'last_task', ARGV[2], 'last_fired_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'fires', 1)
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'caught_up', 1) end
local skipped = tonumber(ARGV[5]) or 0
if skipped > 0 then redis.call('HINCRBY', KEYS[1], 'skipped', skipped) end
return 1
""",
)

# KEYS: leader, state. ARGV: lease value, up to ms, how many occurrences that drops. Missed occurrences
# dropped by the catch-up policy (counted in 'skipped' when the cursor moves). Reply: -1 not the leader,
# 1 moved, 0 not moved.
SKIP = Script(
    "sched-skip",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[2], 'cursor'))
local to = tonumber(ARGV[2])
if not cur or to <= cur then return 0 end
redis.call('HSET', KEYS[2], 'cursor', to)
redis.call('HDEL', KEYS[2], 'pending', 'pending_by')
local skipped = tonumber(ARGV[3]) or 0
if skipped > 0 then redis.call('HINCRBY', KEYS[2], 'skipped', skipped) end
return 1
""",
)

# KEYS: defs, state. ARGV: name, definition JSON, timing signature, now ms, resume (1: from now).
# A new schedule, or one whose timing changed (or is resumed), starts from now: no catch-up of the
# occurrences before it existed. Reply: 1 created, 0 updated.
SAVE = Script(
    "sched-save",
    """
local created = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if created == 0 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local st = redis.call('HMGET', KEYS[2], 'sig', 'cursor')
local now = tonumber(ARGV[4])
if st[1] ~= ARGV[3] or ARGV[5] == '1' then
  local cur = tonumber(st[2])
  if not cur or cur < now then cur = now end
  redis.call('HSET', KEYS[2], 'sig', ARGV[3], 'cursor', cur)
  redis.call('HDEL', KEYS[2], 'pending', 'pending_by')
end
return created
""",
)

# KEYS: the states to read. Reply: one flat HGETALL list per key.
STATES = Script(
    "sched-states",
    """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end
return out
""",
)
