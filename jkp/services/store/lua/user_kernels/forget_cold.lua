-- Forget the cold kernels ARGV, giving their users' slots back.
--- @include "includes/now"
--- @include "includes/user_slots"
for _, id in ipairs(ARGV) do
  local user = redis.call('HGET', KEYS[2], id)
  if user then
    free_slot(KEYS[1], user, id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return 1
