-- A claim that ends without a hand-out: back to the pop end of the idle list ("release") or to
-- the retiring set ("retire"), if replica ARGV[5] holds it ('' for any); a release is announced
-- on channel ARGV[6] to the pops waiting for a kernel. The pop's idempotency
-- record goes too, so a retry starts afresh, and the slot the claim took of its user (KEYS[4]).
--- @include "includes/now"
--- @include "includes/claim_holder"
--- @include "includes/user_slots"
if not held_by(KEYS[1], ARGV[1], ARGV[5]) then return 0 end
free_slot(KEYS[4], cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))['user_id'], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[2] == 'release' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[6], 'released')
else
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
if KEYS[3] ~= '' then
  local record = redis.call('GET', KEYS[3])
  if record and cjson.decode(record)['owner'] == ARGV[4] then redis.call('DEL', KEYS[3]) end
end
return 1
