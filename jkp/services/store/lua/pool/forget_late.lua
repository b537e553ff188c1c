-- A late kernel (KEYS[1]) whose time ran out is forgotten, with its spec (KEYS[2]).
--- @include "includes/now"
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
