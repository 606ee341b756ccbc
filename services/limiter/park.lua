-- Park a pool, on Redis's clock: acquire refuses it until then. A parking never shortens
-- the one in force: the later end wins, with its reason.
--
-- KEYS: parked hash (in the pool's hash slot)
-- ARGV: seconds ('inf': until lifted), reason
-- Returns {until ('forever' or store time), reason, since}.
local parked_key = KEYS[1]
local forever = ARGV[1] == 'inf'
local seconds = tonumber(ARGV[1])

local function fmt(x)
  return string.format('%.17g', x)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local held = redis.call('HMGET', parked_key, 'until', 'reason', 'since')
if held[1] then
  local held_until = tonumber(held[1])
  local live = held[1] == 'forever' or (held_until and held_until > now)
  local later = held[1] == 'forever' or (not forever and held_until and held_until >= now + seconds)
  if live and later then
    return {held[1], held[2] or '', held[3] or fmt(now)}
  end
end

local ends = forever and 'forever' or fmt(now + seconds)
redis.call('DEL', parked_key)
redis.call('HSET', parked_key, 'until', ends, 'reason', ARGV[2], 'since', fmt(now))
if not forever then
  redis.call('PEXPIRE', parked_key, math.max(1, math.ceil(seconds * 1000)))
end
return {ends, ARGV[2], fmt(now)}
