-- List the pools registered within the tick TTL; forget older ones.
-- KEYS: pools zset. ARGV: tick_ttl (seconds).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local oldest = now - tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', oldest))
return redis.call('ZRANGE', KEYS[1], 0, -1)
