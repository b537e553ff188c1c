-- A claim's replica, or nil when none holds it (a claim of jkp's replicas names its replica).
local function held_by(claims, id, replica)
  local claim = redis.call('HGET', claims, id)
  if not claim then return false end
  local holder = cjson.decode(claim)['replica']
  return replica == '' or not holder or holder == replica
end
