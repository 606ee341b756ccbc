-- Admit one request to a pool, on Redis's clock: a parked pool refuses, then the
-- concurrency lease, then GCRA. A refusal reserves nothing (no TAT advance, no lease).
--
-- KEYS: state hash, tat string, leases zset, parked hash (all in the pool's hash slot)
-- ARGV: initial_rate, burst_seconds, max_wait, lease id, lease_ttl, concurrency_retry
-- Returns {granted 1/0, reason, wait, rate, cap ('' for none), in_flight, epoch, now,
-- parked reason ('' unless parked)}.
-- Floats go back as %.17g strings: Redis truncates Lua numbers to integers on the way out.
local state_key, tat_key, leases_key, parked_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local lease = ARGV[4]
local lease_ttl = tonumber(ARGV[5])
local concurrency_retry = tonumber(ARGV[6])

local function fmt(x)
  return string.format('%.17g', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- Saved state wins. "inf" is no rate limit; a missing, zero or NaN rate is the initial one
-- (stores.parse_rate). An empty or missing cap is none (stores.parse_cap).
local saved = redis.call('HMGET', state_key, 'rate', 'concurrency', 'epoch')
local unlimited = saved[1] == 'inf'
local rate = tonumber(saved[1])
if not unlimited and not (rate and rate > 0 and rate < math.huge) then
  rate = tonumber(ARGV[1])
end
local cap = tonumber(saved[2])
if cap and cap > -math.huge and cap < math.huge then
  cap = math.max(1, math.floor(cap))
else
  cap = nil
end
local epoch = tonumber(saved[3]) or 0
local rate_text = unlimited and 'inf' or fmt(rate)
local cap_text = cap and tostring(cap) or ''

-- A parked pool (its key's quota is spent, or the key unusable) refuses before anything
-- else, with the wait until it comes back ('inf': until lifted). A finite parking also
-- expires by itself (park.lua sets the TTL); the time check covers the last millisecond.
local parked = redis.call('HMGET', parked_key, 'until', 'reason')
if parked[1] then
  local forever = parked[1] == 'forever'
  local parked_until = tonumber(parked[1])
  if forever or (parked_until and parked_until > now) then
    local wait = forever and 'inf' or fmt(parked_until - now)
    return {0, 'parked', wait, rate_text, cap_text, redis.call('ZCARD', leases_key), epoch,
      fmt(now), parked[2] or ''}
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
local tat = nil
if not unlimited then
  local tat_raw = redis.call('GET', tat_key)
  local laid_at = nil
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
end

-- A lease past its expiry belongs to a proxy that crashed or lost its report: free it.
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now)
local in_flight = redis.call('ZCARD', leases_key)
if cap and in_flight >= cap then
  local wait = concurrency_retry
  local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
  if first[2] then
    wait = math.min(wait, tonumber(first[2]) - now)
  end
  return {0, 'concurrency', fmt(wait), rate_text, cap_text, in_flight, epoch, fmt(now), ''}
end

-- GCRA: emission interval 1/rate, tolerance burst_seconds; no rate, no wait.
local wait = 0
if unlimited then
  redis.call('DEL', tat_key)
else
  wait = math.max(0, tat - burst - now)
  if wait > max_wait then
    return {0, 'rate', fmt(wait), rate_text, cap_text, in_flight, epoch, fmt(now), ''}
  end
  save_tat(tat + 1 / rate)
end

local added = redis.call('ZADD', leases_key, now + lease_ttl, lease)
local lease_ms = math.max(1, math.ceil(lease_ttl * 1000))
if redis.call('PTTL', leases_key) < lease_ms then
  redis.call('PEXPIRE', leases_key, lease_ms)
end
return {1, 'ok', fmt(wait), rate_text, cap_text, in_flight + added, epoch, fmt(now), ''}
