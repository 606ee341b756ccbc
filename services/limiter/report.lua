-- Add the proxies' tick counts, release leases, and push what a 429 changes at once.
--
-- KEYS: state hash, leases zset, waiters zset (in the pool's hash slot)
-- ARGV: tick key prefix, tick_ttl_ms, the pool's freed channel, the clients' key prefix
--       ('{prefix}:{client:'), the pool's name, the state's TTL (ms, for a state the
--       first 1302 of a new pool creates), number of releases R, R lease ids,
--       number of clients T, T pairs (alias, tokens), then triples of
--       (tick index, field, value). ok_at keeps the highest value, refused_at and told
--       the lowest, latency_sum adds floats; the rest add integers.
-- A released lease also leaves the waiters (a request that gave up waiting) and its
-- client's leases ('{prefix}:{client:<alias>}:leases', the concurrent budget: another
-- hash slot); tokens go to the client's count of the UTC day.
-- The push (stores.pushed_cap and memory_store._push say the same): a frequency 429
-- while the rate probes puts probe_base back in force; a 1302 puts cap_base back, or caps
-- an uncapped pool at one below the lowest in-flight count a 1302 came at (a pool without
-- a saved state too: its state is then that cap alone, which the law's first step takes).
-- While a cap is in force, the number of leases released is published on the freed
-- channel, so that every replica wakes as many of its requests waiting for a slot.
-- Returns 1.
local state_key, leases_key, waiters_key = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl_ms, channel = ARGV[1], ARGV[2], ARGV[3]
local client_prefix, pool_name, state_ttl_ms = ARGV[4], ARGV[5], ARGV[6]
local releases = tonumber(ARGV[7])
local freed = 0
for i = 8, 7 + releases do
  local lease = ARGV[i]
  freed = freed + redis.call('ZREM', leases_key, lease)
  redis.call('ZREM', waiters_key, lease)
  local client = string.match(lease, '^%d+:[^:]+:([^/]+)/')
  if client then
    redis.call('ZREM', client_prefix .. client .. '}:leases', pool_name .. ' ' .. lease)
  end
end
local i = 8 + releases
local clients = tonumber(ARGV[i])
if clients > 0 then
  local clock = redis.call('TIME')
  local day = math.floor(tonumber(clock[1]) / 86400)
  for j = i + 1, i + 2 * clients, 2 do
    local key = client_prefix .. ARGV[j] .. '}:tokens:' .. day
    redis.call('INCRBY', key, ARGV[j + 1])
    redis.call('EXPIRE', key, 2 * 86400)
  end
end

local limited, concurrency_limited, refused_at = false, false, nil
local touched = {}
i = i + 1 + 2 * clients
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

if not (limited or concurrency_limited) then
  return announce()
end
local clock = redis.call('TIME')
local now = string.format('%.17g', tonumber(clock[1]) + tonumber(clock[2]) / 1000000)
if redis.call('EXISTS', state_key) == 0 then
  -- A pool the law has not stepped yet (it is new): the first 1302 caps it all the same,
  -- one below the count it came at, so that its retries meet the cap at once instead of
  -- burning their attempts until the limiter's first step. Nothing else is pushed.
  if concurrency_limited and refused_at then
    redis.call('HSET', state_key, 'concurrency', tostring(math.max(1, refused_at - 1)),
      'epoch', 1, 'pushed_cap', now, 'version', 1)
    redis.call('PEXPIRE', state_key, state_ttl_ms)
  end
  return announce()
end
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
