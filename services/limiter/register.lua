-- Mark a pool as active now (Redis time) in the pool registry.
-- KEYS: pools zset. ARGV: pool, tick_ttl_ms.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
-- With no acquire anywhere for a tick TTL, the registry itself goes.
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
