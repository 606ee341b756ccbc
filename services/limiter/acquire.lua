-- Admit one request to a pool, on Redis's clock: the concurrency lease first, then GCRA.
-- A refusal reserves nothing (no TAT advance, no lease) but still counts as demand.
--
-- KEYS: state hash, tat string, leases zset (all in the pool's hash slot)
-- ARGV: initial_rate, initial_concurrency, burst_seconds, max_wait, lease id, lease_ttl,
--       demand (1/0), window_seconds, window_ttl_ms, concurrency_retry, window key prefix
-- Returns {granted 1/0, reason, wait, rate, concurrency, now}. Floats go back as %.17g
-- strings: Redis truncates Lua numbers to integers on the way out.
local state_key, tat_key, leases_key = KEYS[1], KEYS[2], KEYS[3]
local burst = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local lease = ARGV[5]
local lease_ttl = tonumber(ARGV[6])
local demand = ARGV[7] == '1'
local window_seconds = tonumber(ARGV[8])
local window_ttl_ms = ARGV[9]
local concurrency_retry = tonumber(ARGV[10])
local window_prefix = ARGV[11]

local function fmt(x)
  return string.format('%.17g', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- Saved state wins; a missing, zero, NaN or infinite value falls back to the initial one.
local saved = redis.call('HMGET', state_key, 'rate', 'concurrency')
local rate = tonumber(saved[1])
if not (rate and rate > 0 and rate < math.huge) then
  rate = tonumber(ARGV[1])
end
local cap = tonumber(saved[2])
if cap and cap > -math.huge and cap < math.huge then
  cap = math.max(1, math.floor(cap))
else
  cap = tonumber(ARGV[2])
end

-- The same arithmetic as Python's float floor division, so that the proxy's
-- config.window_of(now) names the very window counted here.
local window = math.floor((now - math.fmod(now, window_seconds)) / window_seconds + 0.5)
local window_key = window_prefix .. string.format('%d', window)

local function count_window(in_flight)
  if demand then
    redis.call('HINCRBY', window_key, 'demand', 1)
  end
  local peak = tonumber(redis.call('HGET', window_key, 'peak_concurrency'))
  if not peak or in_flight > peak then
    redis.call('HSET', window_key, 'peak_concurrency', in_flight)
  end
  -- Every acquire writes a peak, so no peak yet means the window's first acquire: its TTL,
  -- set once, outlives the window's few seconds of writes (reports renew it themselves).
  if not peak then
    redis.call('PEXPIRE', window_key, window_ttl_ms)
  end
end

-- Once the TAT has passed it means the same as no TAT, so the key may go then. It is
-- stored with the rate its backlog was laid out at: "<tat> <rate>".
local function save_tat(value)
  redis.call('SET', tat_key, fmt(value) .. ' ' .. fmt(rate),
    'PX', math.max(1, math.ceil((value - now) * 1000)))
end

-- The requests already granted a wait (the backlog) wait at the rate in force, not the
-- one they were granted at: when the rate changes, the proxies stretch or shrink what is
-- left of their waits by old rate / new rate (and give up past max_wait), and the TAT
-- moves the same way here, so the upstream sees the new rate at once. Done before either
-- refusal, so that the first acquire after a change rescales, whatever it gets.
local tat_raw = redis.call('GET', tat_key)
local tat, laid_at = nil, nil
if tat_raw then
  local at, laid = string.match(tat_raw, '^(%S+) (%S+)$')
  tat, laid_at = tonumber(at or tat_raw), tonumber(laid)
end
if not tat or tat < now then
  tat = now
elseif laid_at and laid_at > 0 and laid_at ~= rate then
  -- The send time of the last request granted; later than now only if it is waiting.
  local last = tat - burst - 1 / laid_at
  if last > now then
    last = now + math.min((last - now) * laid_at / rate, max_wait)
    tat = last + burst + 1 / rate
    save_tat(tat)
  end
end

-- A lease past its expiry belongs to a proxy that crashed or lost its report: free it.
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
local in_flight = redis.call('ZCARD', leases_key)
if in_flight >= cap then
  count_window(in_flight)
  local wait = concurrency_retry
  local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
  if first[2] then
    wait = math.min(wait, tonumber(first[2]) - now)
  end
  return {0, 'concurrency', fmt(wait), fmt(rate), cap, fmt(now)}
end

-- GCRA: emission interval 1/rate, tolerance burst_seconds.
local wait = math.max(0, tat - burst - now)
if wait > max_wait then
  count_window(in_flight)
  return {0, 'rate', fmt(wait), fmt(rate), cap, fmt(now)}
end
save_tat(tat + 1 / rate)

local added = redis.call('ZADD', leases_key, now + lease_ttl, lease)
local lease_ms = math.max(1, math.ceil(lease_ttl * 1000))
if redis.call('PTTL', leases_key) < lease_ms then
  redis.call('PEXPIRE', leases_key, lease_ms)
end
count_window(in_flight + added)
return {1, 'ok', fmt(wait), fmt(rate), cap, fmt(now)}
