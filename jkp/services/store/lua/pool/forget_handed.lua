-- Handed-out kernels (ARGV) that EG no longer has are forgotten, with the alias each was bound
-- to (KEYS[2]) while that alias still names it, and their users' slots (KEYS[3]).
--- @include "includes/now"
--- @include "includes/user_slots"
for _, id in ipairs(ARGV) do
  local handed = redis.call('HGET', KEYS[1], id)
  if handed then
    free_slot(KEYS[3], cjson.decode(handed)['user_id'], id)
    local alias = cjson.decode(handed)['alias']
    if alias then
      local binding = redis.call('HGET', KEYS[2], alias)
      if binding and cjson.decode(binding)['kernel_id'] == id then
        redis.call('HDEL', KEYS[2], alias)
      end
    end
    redis.call('HDEL', KEYS[1], id)
  end
end
return 1
