-- Mark a replica alive until now + ttl (Redis time); return how many replicas are alive.
-- KEYS: replicas zset. ARGV: replica, ttl (seconds).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The key lives as long as its longest-lived member, so a dead pool's set goes by itself.
local ttl_ms = math.max(1, math.ceil(ttl * 1000))
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return redis.call('ZCARD', KEYS[1])
