-- A place in the pool for a kernel about to be started by replica ARGV[4] (KEYS[3]: owners).
-- Kernels of another spec (ARGV[5]) do not count toward the target: during a roll-over the
-- new spec's pool fills while the old kernels wait to be retired. The pool is registered
-- (KEYS[5], ARGV[6]) in the same step: no kernel of it is ever outside the registry's reach.
--- @include "includes/now"
--- @include "includes/of_spec"
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[5])
if idle_of_spec(KEYS[1], ARGV[5]) + live >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[5]) end
if KEYS[5] then redis.call('HSET', KEYS[5], KEYS[1], ARGV[6]) end
return 1
