-- Refresh replica ARGV[1]'s heartbeat for ARGV[2] seconds; forget heartbeats long expired.
-- The pool registers itself (KEYS[3], ARGV[4]) too: its kernels pooled before it ever was.
--- @include "includes/now"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], KEYS[4], ARGV[4]) end
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 3600)) do
  redis.call('ZREM', KEYS[1], replica)
  redis.call('HDEL', KEYS[2], replica)
end
return 1
