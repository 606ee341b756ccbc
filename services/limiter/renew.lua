-- Extend leases that are still held to expire at now + ttl (Redis time). A lease already
-- released or expired stays gone: a renewal never brings one back.
-- KEYS: leases zset. ARGV: ttl (seconds), lease ids... Returns how many were renewed.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
end
if renewed > 0 then
  local ttl_ms = math.max(1, math.ceil(ttl * 1000))
  if redis.call('PTTL', KEYS[1]) < ttl_ms then
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
end
return renewed
