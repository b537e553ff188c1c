-- Replica ARGV[2] takes over the claim on kernel ARGV[1] if its pop's replica's heartbeat ran out.
--- @include "includes/now"
--- @include "includes/dead"
local claim = redis.call('HGET', KEYS[1], ARGV[1])
if not claim then return false end
claim = cjson.decode(claim)
if not claim['replica'] or not dead(KEYS[2], claim['replica']) then return false end
claim['replica'] = ARGV[2]
claim['claimed_at'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
return claim['model']
