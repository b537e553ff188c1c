-- Replica ARGV[2]'s claim on kernel ARGV[1], whose kernel says it was handed out already: to
-- K:handed under its own record (ARGV[3], alias ARGV[4], binding ARGV[5]). The claim's user
-- gives its slot back, and its pop's idempotency record (KEYS[9], owner ARGV[6]) goes.
--- @include "includes/now"
--- @include "includes/claim_holder"
--- @include "includes/user_slots"
--- @include "includes/known"
if not held_by(KEYS[4], ARGV[1], ARGV[2]) then return 0 end
free_slot(KEYS[8], cjson.decode(redis.call('HGET', KEYS[4], ARGV[1]))['user_id'], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
write_handed(ARGV[1], ARGV[3], ARGV[4], ARGV[5])
if KEYS[9] ~= '' then
  local record = redis.call('GET', KEYS[9])
  if record and cjson.decode(record)['owner'] == ARGV[6] then redis.call('DEL', KEYS[9]) end
end
return 1
