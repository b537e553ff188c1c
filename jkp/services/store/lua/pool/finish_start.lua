-- Pooled kernels are announced on channel ARGV[6] (jkp.services.waiting_pops).
-- 1: pooled; 0: the lease is gone (expired and retired); -1: another replica took the start over.
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= ARGV[3] then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
redis.call('PUBLISH', ARGV[6], 'pooled')
return 1
