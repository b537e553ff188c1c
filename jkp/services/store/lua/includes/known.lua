-- Whether kernel ``id`` is in any of the pool's keys (KEYS[1..6]: idle, starting, late,
-- claimed, handed, retiring); and a handed-out kernel's record written back (KEYS[5]) with
-- its binding (KEYS[7], unless the alias names something else already) and its user's slot
-- (KEYS[8]).
local function known(id)
  if redis.call('ZSCORE', KEYS[2], id) or redis.call('ZSCORE', KEYS[3], id) then return true end
  for i = 4, 6 do
    if redis.call('HEXISTS', KEYS[i], id) == 1 then return true end
  end
  for _, model in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if string.find(model, id, 1, true) and cjson.decode(model)['id'] == id then return true end
  end
  return false
end
local function write_handed(id, record, alias, binding)
  redis.call('HSET', KEYS[5], id, record)
  if alias ~= '' then redis.call('HSETNX', KEYS[7], alias, binding) end
  local user = cjson.decode(record)['user_id']
  local held = user_slots(KEYS[8], user)
  held[id] = 0
  store_user_slots(KEYS[8], user, held)
end
