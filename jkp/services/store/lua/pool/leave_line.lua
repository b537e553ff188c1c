-- A waiter (ARGV[1]) that ends without a kernel leaves the line (KEYS[1], KEYS[2]); the pops
-- behind it may be next now: they are woken on channel ARGV[2] when kernels are idle (KEYS[3]).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('LLEN', KEYS[3]) > 0 then redis.call('PUBLISH', ARGV[2], 'left') end
return 1
