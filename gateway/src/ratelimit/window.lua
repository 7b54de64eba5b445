-- One rate-limit decision and revocation check, atomically: a replica takes
-- one slot of the subject's window, or a lease of several (see ratelimit.rs).
--
-- KEYS[1]  the subject's sliding-window log: a ZSET with one entry per call
--          that took slots, scored by time (ms), named `<time>.<call>#<slots>`
-- KEYS[2]  how many slots the log holds, kept in step with it (rebuilt from
--          the log when absent)
-- KEYS[3]  optional: the session's key in the auth service's mirror of live
--          sessions (an allow-list: absent means ended, or lost with Redis's
--          data and not yet rebuilt; either way the token is refused)
-- ARGV[1]  the limit (requests per window)
-- ARGV[2]  the window in milliseconds
-- ARGV[3]  a random token that makes this call's log entry unique
-- ARGV[4]  slots wanted: 1, or a lease's size
-- ARGV[5]  how long a lease may be used, in milliseconds: a lease's entry is
--          logged at now + this, so it stays in the window for a full window
--          after the last moment its slots can be used
--
-- Returns {outcome, remaining, reset_ms, granted}: outcome 0 = allowed, 1 =
-- over the limit, 2 = session not live; reset_ms = time until the oldest
-- logged entry leaves the window (slots free); granted = slots taken.
if #KEYS > 2 and redis.call('EXISTS', KEYS[3]) == 0 then
  return {2, 0, 0, 0}
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = math.max(1, math.floor(tonumber(ARGV[4])))
local hold = math.max(0, math.floor(tonumber(ARGV[5])))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function slots(entry)
  return tonumber(string.match(entry, '#(%d+)$'))
end
local function sum(entries)
  local n = 0
  for _, entry in ipairs(entries) do
    n = n + slots(entry)
  end
  return n
end

local stored = tonumber(redis.call('GET', KEYS[2]))
local count = stored
local stale = now - window
if count then
  count = count - sum(redis.call('ZRANGE', KEYS[1], '-inf', stale, 'BYSCORE'))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale)
if not count or count < 0 or redis.call('ZCARD', KEYS[1]) == 0 then
  count = sum(redis.call('ZRANGE', KEYS[1], 0, -1))
end

local outcome = 1
local granted = 0
if count < limit then
  granted = math.min(want, limit - count)
  local at = now
  if granted > 1 then
    at = now + hold
  end
  redis.call('ZADD', KEYS[1], at, t[1] .. '.' .. t[2] .. '.' .. ARGV[3] .. '#' .. granted)
  redis.call('PEXPIRE', KEYS[1], window + hold)
  count = count + granted
  redis.call('SET', KEYS[2], count, 'PX', window + hold)
  outcome = 0
elseif count ~= stored then
  -- A refusal does not extend the log's expiry; the count ends with it.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('SET', KEYS[2], count, 'PX', ttl)
  else
    redis.call('DEL', KEYS[2])
  end
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {outcome, limit - count, reset, granted}
