-- Retire the oldest idle kernels of spec ARGV[2] above target ARGV[1]; returns their models.
--- @include "includes/now"
--- @include "includes/of_spec"
local live = starting_of_spec(KEYS[2], KEYS[4], ARGV[2])
local surplus = idle_of_spec(KEYS[1], ARGV[2]) + live - tonumber(ARGV[1])
local models = {}
if surplus <= 0 then return models end
local idle = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #idle, 1, -1 do
  if surplus <= 0 then break end
  if of_spec(idle[i], ARGV[2]) then
    redis.call('LREM', KEYS[1], -1, idle[i])
    redis.call('HSET', KEYS[3], cjson.decode(idle[i])['id'], now)
    table.insert(models, idle[i])
    surplus = surplus - 1
  end
end
return models
