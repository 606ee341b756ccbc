-- Add the proxies' tick counts, release leases, and push what a 429 changes at once.
--
-- KEYS: state hash, leases zset (in the pool's hash slot)
-- ARGV: tick key prefix, tick_ttl_ms, the pool's freed channel, number of releases R, R
--       lease ids, then triples of
--       (tick index, field, value). ok_at keeps the highest value, refused_at and told
--       the lowest, latency_sum adds floats; the rest add integers.
-- The push (stores.pushed_cap and memory_store._push say the same): a frequency 429
-- while the rate probes puts probe_base back in force; a 1302 puts cap_base back, or caps
-- an uncapped pool at one below the lowest in-flight count a 1302 came at.
-- While a cap is in force, the number of leases released is published on the freed
-- channel, so that every replica wakes as many of its requests waiting for a slot.
-- Returns 1.
local state_key, leases_key = KEYS[1], KEYS[2]
local prefix, ttl_ms, channel = ARGV[1], ARGV[2], ARGV[3]
local releases = tonumber(ARGV[4])
local freed = 0
for i = 5, 4 + releases do
  freed = freed + redis.call('ZREM', leases_key, ARGV[i])
end

local limited, concurrency_limited, refused_at = false, false, nil
local touched = {}
local i = 5 + releases
while i + 2 <= #ARGV do
  local key, field, value = prefix .. ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if field == 'ok_at' then
    local held = tonumber(redis.call('HGET', key, field))
    if not held or tonumber(value) > held then redis.call('HSET', key, field, value) end
  elseif field == 'refused_at' or field == 'told' then
    local held = tonumber(redis.call('HGET', key, field))
    if not held or tonumber(value) < held then redis.call('HSET', key, field, value) end
    if field == 'refused_at' and (not refused_at or tonumber(value) < refused_at) then
      refused_at = tonumber(value)
    end
  elseif field == 'latency_sum' then
    redis.call('HINCRBYFLOAT', key, field, value)
  else
    redis.call('HINCRBY', key, field, value)
    if field == 'rate_frequency' and tonumber(value) > 0 then limited = true end
    if field == 'rate_concurrency' and tonumber(value) > 0 then concurrency_limited = true end
  end
  touched[key] = true
  i = i + 3
end
for key in pairs(touched) do
  redis.call('PEXPIRE', key, ttl_ms)
end

local function announce()
  if freed > 0 then
    local cap = redis.call('HGET', state_key, 'concurrency')
    if cap and cap ~= '' then redis.call('PUBLISH', channel, freed) end
  end
  return 1
end

if not (limited or concurrency_limited) or redis.call('EXISTS', state_key) == 0 then
  return announce()
end
local clock = redis.call('TIME')
local now = string.format('%.17g', tonumber(clock[1]) + tonumber(clock[2]) / 1000000)
local saved = redis.call('HMGET', state_key, 'probe_base', 'cap_base', 'concurrency', 'cap_floor')
local changed = false
if limited and saved[1] and saved[1] ~= '' then
  redis.call('HSET', state_key, 'rate', saved[1], 'probe_base', '', 'pushed_rate', now)
  changed = true
end
if concurrency_limited then
  local cap = tonumber(saved[3])
  local base = tonumber(saved[2])
  local floor = tonumber(saved[4]) or 1
  local pushed = nil
  if base then
    pushed = math.max(1, math.floor(base))
  elseif refused_at and not cap then
    pushed = math.max(floor, refused_at - 1)
  end
  if pushed then
    redis.call('HSET', state_key, 'concurrency', tostring(pushed), 'cap_base', '',
      'pushed_cap', now)
    redis.call('HINCRBY', state_key, 'epoch', 1)
    changed = true
  end
end
if changed then
  redis.call('HINCRBY', state_key, 'version', 1)
end
return announce()
