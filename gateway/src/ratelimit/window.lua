-- One request's rate-limit decision and revocation check, atomically.
--
-- KEYS[1]  the subject's sliding-window log, a ZSET of request times (ms)
-- KEYS[2]  optional: the session's key in the auth service's mirror of live
--          sessions (an allow-list: absent means ended, or lost with Redis's
--          data and not yet rebuilt; either way the token is refused)
-- ARGV[1]  the limit (requests per window)
-- ARGV[2]  the window in milliseconds
-- ARGV[3]  a random token that makes this request's log entry unique
--
-- Returns {outcome, remaining, reset_ms}: outcome 0 = allowed, 1 = over the
-- limit, 2 = session not live; reset_ms = time until the oldest logged request
-- leaves the window (a slot frees).
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  return {2, 0, 0}
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local outcome = 1
if count < limit then
  redis.call('ZADD', KEYS[1], now, t[1] .. '.' .. t[2] .. '.' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  outcome = 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
return {outcome, limit - count, reset}
