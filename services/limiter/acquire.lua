-- Admit one request to a pool, on Redis's clock: a parked pool refuses, then the
-- client's budgets, then the concurrency lease and the fair share of it, then GCRA. A
-- refusal reserves nothing (no TAT advance, no lease).
--
-- KEYS: state hash, tat string, leases zset, parked hash, waiters zset, queued zset (all
-- in the pool's hash slot)
-- ARGV: initial_rate, burst_seconds, max_wait, lease id, lease_ttl, concurrency_retry,
--   flow ('' without a claim), queue (1: a refused request waits and asks again),
--   charge (1: a grant counts against the requests-per-minute budget), client key base
--   ('' without budgets: the client's keys, '{prefix}:{client:<alias>}:', another hash
--   slot), rpm, concurrent, tokens_per_day ('' for none), waiting_seconds, pool name,
--   fair_horizon (seconds of the rate's backlog a claim may book ahead)
-- Returns {granted 1/0, reason, wait, rate, cap ('' for none), in_flight, epoch, now,
-- parked reason ('' unless parked), budget ('' unless refused by one)}.
-- Floats go back as %.17g strings: Redis truncates Lua numbers to integers on the way out.
-- The fair share (store.fair_shares and store.over_share say the same in Python): the
-- flow of every lease and waiter is in its id ('rank:weight:client/...'), so it is
-- counted from the sets themselves, with nothing to drift.
local state_key, tat_key, leases_key, parked_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local waiters_key, queued_key = KEYS[5], KEYS[6]
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local lease = ARGV[4]
local lease_ttl = tonumber(ARGV[5])
local concurrency_retry = tonumber(ARGV[6])
local flow = ARGV[7]
local queue = ARGV[8] == '1'
local charge = ARGV[9] == '1'
local client_base = ARGV[10]
local rpm, concurrent, tokens_per_day = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local waiting_seconds = tonumber(ARGV[14])
local pool_name = ARGV[15]
local fair_horizon = tonumber(ARGV[16])

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
      fmt(now), parked[2] or '', ''}
  end
end

-- The client's budgets, fleet-wide (its keys are in its own hash slot): tokens today,
-- requests in flight in every pool, requests per minute (GCRA: interval 60 / rpm, a
-- minute's worth of burst, so at most rpm in any minute).
local rpm_key, client_leases_key, rpm_tat = nil, nil, nil
local function over_budget(name, wait)
  return {0, 'budget', fmt(wait), rate_text, cap_text, redis.call('ZCARD', leases_key), epoch,
    fmt(now), '', name}
end
if client_base ~= '' then
  if tokens_per_day then
    local day = math.floor(now / 86400)
    local used = tonumber(redis.call('GET', client_base .. 'tokens:' .. day)) or 0
    if used >= tokens_per_day then
      return over_budget('tokens_per_day', (day + 1) * 86400 - now)
    end
  end
  if concurrent then
    client_leases_key = client_base .. 'leases'
    redis.call('ZREMRANGEBYSCORE', client_leases_key, '-inf', now)
    if redis.call('ZCARD', client_leases_key) >= concurrent then
      local first = redis.call('ZRANGE', client_leases_key, 0, 0, 'WITHSCORES')
      return over_budget('concurrent', math.min(1, tonumber(first[2]) - now))
    end
  end
  if rpm and charge then
    rpm_key = client_base .. 'rpm'
    local interval = 60 / rpm
    rpm_tat = math.max(tonumber(redis.call('GET', rpm_key)) or now, now)
    local ahead = rpm_tat - (60 - interval) - now
    if ahead > 0 then
      return over_budget('rpm', ahead)
    end
    rpm_tat = rpm_tat + interval
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

-- A refused request that will ask again waits (for the fair share) until it asks again.
local function refuse_slot(reason, wait)
  if queue and flow ~= '' then
    redis.call('ZADD', waiters_key, now + waiting_seconds, lease)
    redis.call('PEXPIRE', waiters_key, math.ceil(waiting_seconds * 1000) + 1000)
  end
  return {0, reason, fmt(wait), rate_text, cap_text, in_flight, epoch, fmt(now), '', ''}
end

local function slot_wait()
  local wait = concurrency_retry
  local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
  if first[2] then
    wait = math.min(wait, tonumber(first[2]) - now)
  end
  return wait
end

if cap and in_flight >= cap then
  return refuse_slot('concurrency', slot_wait())
end

-- Weighted max-min shares of a capacity (rank by rank, each flow's demand what it holds
-- and its waiters), weighed only while someone else waits: a free slot is refused to a
-- flow at or over its share only for the sake of another below its share that waits.
-- What a flow holds: its leases (of the cap), or its reservations still ahead in the
-- rate's backlog (of the fair horizon's slots).
local function parse_flow(name)
  local rank, weight = string.match(name, '^(%d+):([^:]+):')
  return tonumber(rank) or 0, tonumber(weight) or 1
end

local function over_share(held_key, capacity)
  local flows, order = {}, {}
  local function entry(name)
    local e = flows[name]
    if not e then
      local rank, weight = parse_flow(name)
      e = {rank = rank, weight = weight, held = 0, waiting = 0}
      flows[name] = e
      order[#order + 1] = name
    end
    return e
  end
  for _, member in ipairs(redis.call('ZRANGE', held_key, 0, -1)) do
    local e = entry(string.match(member, '^(.-)/') or '')
    e.held = e.held + 1
  end
  for _, member in ipairs(redis.call('ZRANGE', waiters_key, 0, -1)) do
    if member ~= lease then
      local e = entry(string.match(member, '^(.-)/') or '')
      e.waiting = e.waiting + 1
    end
  end
  local me = entry(flow)
  me.waiting = me.waiting + 1
  -- Water-filling, rank by rank (lower first), as store.fair_shares.
  local ranks, seen = {}, {}
  for _, name in ipairs(order) do
    local rank = flows[name].rank
    if not seen[rank] then
      seen[rank] = true
      ranks[#ranks + 1] = rank
    end
  end
  table.sort(ranks)
  for _, rank in ipairs(ranks) do
    local open = {}
    for _, name in ipairs(order) do
      if flows[name].rank == rank then open[#open + 1] = name end
    end
    while #open > 0 do
      local weights = 0
      for _, name in ipairs(open) do weights = weights + flows[name].weight end
      local level = math.max(0, capacity) / weights
      local rest = {}
      for _, name in ipairs(open) do
        local e = flows[name]
        if e.held + e.waiting <= level * e.weight then
          e.share = e.held + e.waiting
        else
          rest[#rest + 1] = name
        end
      end
      if #rest == #open then
        for _, name in ipairs(open) do flows[name].share = level * flows[name].weight end
        capacity = 0
        break
      end
      for _, name in ipairs(open) do
        local e = flows[name]
        if e.share then capacity = capacity - e.share end
      end
      open = rest
    end
  end
  if me.held < me.share then return false end
  for _, name in ipairs(order) do
    local e = flows[name]
    if name ~= flow and e.waiting > 0 and e.held < e.share then return true end
  end
  return false
end

if cap and flow ~= '' then
  redis.call('ZREMRANGEBYSCORE', waiters_key, '-inf', now)
  local others = redis.call('ZCARD', waiters_key) - redis.call('ZREM', waiters_key, lease)
  if others > 0 and over_share(leases_key, cap) then
    return refuse_slot('share', concurrency_retry)
  end
end

-- GCRA: emission interval 1/rate, tolerance burst_seconds; no rate, no wait.
local wait = 0
if unlimited then
  redis.call('DEL', tat_key)
else
  wait = math.max(0, tat - burst - now)
  if wait > max_wait then
    return {0, 'rate', fmt(wait), rate_text, cap_text, in_flight, epoch, fmt(now), '', ''}
  end
  if flow ~= '' then
    -- A claim books no further ahead than the fair horizon (beyond it, it waits and asks
    -- again), and within it only its share of the horizon's slots while another flow
    -- below its share waits: by Little's law each flow's rate is then its share of the
    -- backlog's, and a light client never queues behind a heavy one's long backlog.
    redis.call('ZREMRANGEBYSCORE', queued_key, '-inf', now)
    if wait > fair_horizon then
      return refuse_slot('queue', wait - fair_horizon)
    end
    redis.call('ZREMRANGEBYSCORE', waiters_key, '-inf', now)
    local others = redis.call('ZCARD', waiters_key) - redis.call('ZREM', waiters_key, lease)
    if others > 0 and over_share(queued_key, math.max(1, math.floor(fair_horizon * rate))) then
      return refuse_slot('queue', 1 / rate)
    end
    if wait > 0 then
      redis.call('ZADD', queued_key, now + wait, lease)
      redis.call('PEXPIRE', queued_key, math.ceil((fair_horizon + 1) * 1000))
    end
  end
  save_tat(tat + 1 / rate)
end

local added = redis.call('ZADD', leases_key, now + lease_ttl, lease)
local lease_ms = math.max(1, math.ceil(lease_ttl * 1000))
if redis.call('PTTL', leases_key) < lease_ms then
  redis.call('PEXPIRE', leases_key, lease_ms)
end
if client_leases_key then
  redis.call('ZADD', client_leases_key, now + lease_ttl, pool_name .. ' ' .. lease)
  if redis.call('PTTL', client_leases_key) < lease_ms then
    redis.call('PEXPIRE', client_leases_key, lease_ms)
  end
end
if rpm_key then
  redis.call('SET', rpm_key, fmt(rpm_tat), 'PX', math.max(1, math.ceil((rpm_tat - now) * 1000)))
end
return {1, 'ok', fmt(wait), rate_text, cap_text, in_flight + added, epoch, fmt(now), '', ''}
