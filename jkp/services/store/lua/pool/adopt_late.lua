-- A late kernel (KEYS[5]) that EG now has: started again under replica ARGV[4] (lease ARGV[3]) if
-- the pool of spec ARGV[5] is below target ARGV[2] and it is of that spec (1), else retired (-1).
--- @include "includes/now"
--- @include "includes/of_spec"
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[5], ARGV[1])
local fingerprint = redis.call('HGET', KEYS[4], ARGV[1])
local own = ARGV[5] == '' or not fingerprint or fingerprint == ARGV[5]
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[5])
if own and idle_of_spec(KEYS[1], ARGV[5]) + live < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[5]) end
  return 1
end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], now)
return -1
