-- Retire the newest idle kernels of spec ARGV[2] above target ARGV[1].
--- @include "includes/now"
--- @include "includes/of_spec"
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[2])
local surplus = idle_of_spec(KEYS[1], ARGV[2]) + live - tonumber(ARGV[1])
local ids = {}
if surplus <= 0 then return ids end
for _, model in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if surplus <= 0 then break end
  if of_spec(model, ARGV[2]) then
    redis.call('LREM', KEYS[1], 1, model)
    local id = cjson.decode(model)['id']
    redis.call('HSET', KEYS[3], id, now)
    table.insert(ids, id)
    surplus = surplus - 1
  end
end
return ids
