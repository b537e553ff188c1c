-- Any other move into the retiring set: from the idle list (ARGV[3] is the stored model), the
-- start leases (and their owners, KEYS[3]) or the handed-out hash (ARGV[1] names KEYS[1]'s type).
--- @include "includes/now"
--- @include "includes/user_slots"
local removed
if ARGV[1] == 'list' then
  removed = redis.call('LREM', KEYS[1], 1, ARGV[3])
elseif ARGV[1] == 'zset' then
  removed = redis.call('ZREM', KEYS[1], ARGV[2])
  if KEYS[3] then redis.call('HDEL', KEYS[3], ARGV[2]) end
  if KEYS[4] then redis.call('HDEL', KEYS[4], ARGV[2]) end
else
  -- A handed-out kernel taken back: the alias a gateway create bound it to goes with it,
  -- and its user's slot (KEYS[4]).
  local handed = redis.call('HGET', KEYS[1], ARGV[2])
  removed = redis.call('HDEL', KEYS[1], ARGV[2])
  if handed then free_slot(KEYS[4], cjson.decode(handed)['user_id'], ARGV[2]) end
  local alias = handed and cjson.decode(handed)['alias']
  if alias and KEYS[3] then
    local binding = redis.call('HGET', KEYS[3], alias)
    if binding and cjson.decode(binding)['kernel_id'] == ARGV[2] then
      redis.call('HDEL', KEYS[3], alias)
    end
  end
end
if removed == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], now)
return 1
