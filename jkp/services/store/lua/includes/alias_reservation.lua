-- Whether an alias is bound, or reserved by a create other than ``create`` whose
-- reservation has not run out (needs ``now``); and its reservation for a create until
-- ``seconds`` from now: a warm create's claim (PoolStore.claim) checks and reserves its
-- client's id in the same script, and its next claim, when a kernel failed, finds it its own.
local function alias_taken(aliases, alias, create)
  local entry = redis.call('HGET', aliases, alias)
  if not entry then return false end
  entry = cjson.decode(entry)
  if not entry['reserved_by'] then return true end
  return entry['reserved_by'] ~= create and entry['expires'] > now
end
local function reserve_alias(aliases, alias, create, seconds)
  redis.call('HSET', aliases, alias,
             cjson.encode({reserved_by = create, expires = now + tonumber(seconds)}))
end
