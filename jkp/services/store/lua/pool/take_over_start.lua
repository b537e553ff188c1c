-- Replica ARGV[2] takes over the start of kernel ARGV[1] if its starter's heartbeat ran out.
--- @include "includes/now"
--- @include "includes/dead"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner or not dead(KEYS[3], owner) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
