-- Replace a pool's state unless it moved on since it was loaded (compare-and-set).
-- KEYS: state hash. ARGV: expected version, state_ttl_ms, field/value pairs...
-- Returns 1 when saved (with version = expected + 1), 0 when a push or another step came
-- first (the caller loads again next tick).
local held = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local expected = tonumber(ARGV[1])
if held ~= expected then
  return 0
end
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
redis.call('HSET', KEYS[1], 'version', tostring(expected + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
