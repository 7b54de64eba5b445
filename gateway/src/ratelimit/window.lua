-- One rate-limit decision and revocation check, atomically: a replica takes
-- one slot of the subject's window, or a lease of several (see ratelimit.rs).
--
-- KEYS[1]  the subject's sliding-window log, a ZSET of request times (ms)
-- KEYS[2]  optional: the session's key in the auth service's mirror of live
--          sessions (an allow-list: absent means ended, or lost with Redis's
--          data and not yet rebuilt; either way the token is refused)
-- ARGV[1]  the limit (requests per window)
-- ARGV[2]  the window in milliseconds
-- ARGV[3]  a random token that makes this call's log entries unique
-- ARGV[4]  slots wanted: 1, or a lease's size
-- ARGV[5]  how long a lease may be used, in milliseconds: a lease's entries
--          are logged at now + this, so each stays in the window for a full
--          window after the last moment its slot can be used
--
-- Returns {outcome, remaining, reset_ms, granted}: outcome 0 = allowed, 1 =
-- over the limit, 2 = session not live; reset_ms = time until the oldest
-- logged request leaves the window (a slot frees); granted = slots taken.
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  return {2, 0, 0, 0}
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = math.max(1, math.floor(tonumber(ARGV[4])))
local hold = math.max(0, math.floor(tonumber(ARGV[5])))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local outcome = 1
local granted = 0
if count < limit then
  granted = math.min(want, limit - count)
  local at = now
  if granted > 1 then
    at = now + hold
  end
  local entries = {}
  local id = t[1] .. '.' .. t[2] .. '.' .. ARGV[3]
  for i = 1, granted do
    entries[2 * i - 1] = at
    entries[2 * i] = id .. '.' .. i
  end
  redis.call('ZADD', KEYS[1], unpack(entries))
  redis.call('PEXPIRE', KEYS[1], window + hold)
  count = count + granted
  outcome = 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {outcome, limit - count, reset, granted}
