-- Replace a pool's state unless it moved on since it was loaded (compare-and-set).
-- KEYS: state hash. ARGV: expected version, state_ttl_ms, the pool's freed channel,
-- all_slots, field/value pairs...
-- Returns 1 when saved (with version = expected + 1), 0 when a push or another step came
-- first (the caller loads again next tick). A save that raises the cap publishes how many
-- slots it added on the freed channel (all_slots when it lifts the cap), so requests
-- waiting for a slot on every replica go at once.
local held = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local expected = tonumber(ARGV[1])
if held ~= expected then
  return 0
end
local old_cap = tonumber(redis.call('HGET', KEYS[1], 'concurrency'))
local new_cap = nil
for i = 5, #ARGV - 1, 2 do
  if ARGV[i] == 'concurrency' then new_cap = tonumber(ARGV[i + 1]) end
end
redis.call('DEL', KEYS[1])
if #ARGV > 4 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
end
redis.call('HSET', KEYS[1], 'version', tostring(expected + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if old_cap then
  if not new_cap then
    redis.call('PUBLISH', ARGV[3], ARGV[4])
  elseif new_cap > old_cap then
    redis.call('PUBLISH', ARGV[3], math.floor(new_cap) - math.floor(old_cap))
  end
end
return 1
