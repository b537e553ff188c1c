-- Replica ARGV[3]'s claim becomes a hand-out; an idempotency record (KEYS[4], when ARGV[4] is a
-- model) keeps the model, with the request's fingerprint (ARGV[8]); a gateway create's binding
-- (ARGV[7]) is kept under the id its client knows the kernel by (ARGV[6]) in the aliases hash
-- (KEYS[3]), in the same step.
--- @include "includes/now"
--- @include "includes/claim_holder"
if not held_by(KEYS[1], ARGV[1], ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local handed = {user_id = ARGV[2], handed_at = now}
if ARGV[6] ~= '' then
  handed['alias'] = ARGV[6]
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(handed))
if ARGV[4] ~= '' then
  local record = {user_id = ARGV[2], kernel_id = ARGV[1], model = ARGV[4], request = ARGV[8]}
  redis.call('SET', KEYS[4], cjson.encode(record), 'PX', ARGV[5])
end
return 1
