-- A taken-over start EG does not have (KEYS[1] starting, KEYS[2] owners, KEYS[3] late): its place
-- goes to a replacement now, and it stays recorded ARGV[3] seconds, in case its request reaches EG.
--- @include "includes/now"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
return 1
