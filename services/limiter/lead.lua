-- Take the leader lease when it is free, renew it when it is ours; 1 while we hold it.
-- KEYS: leader string. ARGV: node, ttl_ms.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
