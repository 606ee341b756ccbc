-- Count the replicas whose heartbeat has not expired (Redis time). KEYS: replicas zset.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.17g', now), '+inf')
