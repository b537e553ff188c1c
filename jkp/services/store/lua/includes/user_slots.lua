-- The slots of ``user`` in USERS that still count (needs ``now``), and how many.
local function user_slots(users, user)
  local raw = redis.call('HGET', users, user)
  local held, count = {}, 0
  if raw then
    for id, expiry in pairs(cjson.decode(raw)) do
      if expiry == 0 or expiry > now then held[id] = expiry; count = count + 1 end
    end
  end
  return held, count
end
local function store_user_slots(users, user, held)
  if next(held) == nil then redis.call('HDEL', users, user)
  else redis.call('HSET', users, user, cjson.encode(held)) end
end
local function free_slot(users, user, id)
  if not user then return end
  local held = user_slots(users, user)
  if held[id] == nil then return end
  held[id] = nil
  store_user_slots(users, user, held)
end
