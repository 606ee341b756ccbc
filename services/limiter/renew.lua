-- Extend leases that are still held to expire at now + ttl (Redis time). A lease already
-- released or expired stays gone: a renewal never brings one back.
-- A lease of a client with a concurrent budget is renewed in the client's leases too.
-- KEYS: leases zset. ARGV: ttl (seconds), the clients' key prefix, the pool's name,
-- lease ids... Returns how many were renewed.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[1])
local client_prefix, pool_name = ARGV[2], ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = 0
for i = 4, #ARGV do
  local lease = ARGV[i]
  local held = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, lease)
  renewed = renewed + held
  local client = string.match(lease, '^%d+:[^:]+:([^/]+)/')
  if held > 0 and client then
    local key = client_prefix .. client .. '}:leases'
    if redis.call('ZADD', key, 'XX', 'CH', now + ttl, pool_name .. ' ' .. lease) > 0 and
        redis.call('PTTL', key) < math.ceil(ttl * 1000) then
      redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
    end
  end
end
if renewed > 0 then
  local ttl_ms = math.max(1, math.ceil(ttl * 1000))
  if redis.call('PTTL', KEYS[1]) < ttl_ms then
    redis.call('PEXPIRE', KEYS[1], ttl_ms)
  end
end
return renewed
