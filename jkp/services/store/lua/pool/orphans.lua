-- Starts (KEYS[1], owners KEYS[2]) and claims (KEYS[3]) whose replica's heartbeat ran out.
--- @include "includes/now"
--- @include "includes/dead"
local starts, claims = {}, {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local owner = redis.call('HGET', KEYS[2], id)
  if owner and dead(KEYS[4], owner) then table.insert(starts, id) end
end
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do
  local replica = cjson.decode(entries[i + 1])['replica']
  if replica and dead(KEYS[4], replica) then table.insert(claims, entries[i]) end
end
return {starts, claims}
