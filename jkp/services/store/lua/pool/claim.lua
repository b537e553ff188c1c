-- A pop's claim. With an idempotency key (KEYS[4]) it first looks at the key's record: the key
-- used for another request (its fingerprint, ARGV[9]) is a conflict, a finished pop's model is
-- answered again, another pop still in flight with it is "pending"; else the claim records this
-- pop (ARGV[4]) as the key's owner, until the claim lease (ARGV[5], ms) runs out or the pop ends.
-- The claim names its replica (ARGV[2]).
-- A gateway create's claim names its client's kernel id (ARGV[6]): "taken" when that is bound
-- or reserved by another create in the aliases hash (KEYS[3]), else reserved with the claim for
-- create ARGV[7], ARGV[8] seconds (the hand-over writes the binding over it).
-- With max_kernels_per_user (ARGV[10], -1: none) the user's slots (KEYS[5]) are counted: "limit"
-- and their count when the user holds that many, else the claimed kernel takes one.
-- A pool sized by demand counts a request's first claim (ARGV[11]: the arrivals' time to live,
-- 0: not counted) in its time bucket (ARGV[14] seconds wide) of the arrivals hash (KEYS[6]).
-- Waiting pops take kernels first come first served (jkp.services.waiting_pops): the request
-- ARGV[12] claims only while fewer live waiters are ahead of it in the line (KEYS[7], KEYS[8])
-- than kernels are idle, and waits in line otherwise, until ARGV[13] seconds from now.
--- @include "includes/now"
--- @include "includes/of_spec"
--- @include "includes/alias_reservation"
--- @include "includes/user_slots"
--- @include "includes/waiting_line"
local idem = KEYS[4]
if idem == '' then idem = nil end
local alias = ARGV[6]
if alias ~= '' and alias_taken(KEYS[3], alias, ARGV[7]) then return {'taken', ''} end
if idem then
  local record = redis.call('GET', idem)
  if record then
    record = cjson.decode(record)
    if record['request'] ~= ARGV[9] then return {'conflict', ''} end
    if record['model'] then return {'replay', record['model']} end
    if record['owner'] ~= ARGV[4] then return {'pending', ''} end
  end
end
local limit = tonumber(ARGV[10])
local slots = nil
if limit >= 0 then
  local count
  slots, count = user_slots(KEYS[5], ARGV[1])
  if count >= limit then return {'limit', tostring(count)} end
end
if tonumber(ARGV[11]) > 0 then
  local bucket = string.format('%.0f', math.floor(now / tonumber(ARGV[14])))
  redis.call('HINCRBY', KEYS[6], bucket, 1)
  redis.call('EXPIRE', KEYS[6], ARGV[11])
end
local waiter = ARGV[12]
if waiter ~= '' then
  local ahead = waiters_ahead(KEYS[7], KEYS[8], waiter, ARGV[3])
  if ahead > 0 and idle_of_spec(KEYS[1], ARGV[3]) <= ahead then
    wait_in_line(KEYS[7], KEYS[8], waiter, ARGV[3], tonumber(ARGV[13]))
    return {'empty', ''}
  end
end
-- The oldest idle kernel of this replica's spec (ARGV[3]): nearly always the last one.
local model = redis.call('LINDEX', KEYS[1], -1)
if model and not of_spec(model, ARGV[3]) then
  model = nil
  local models = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = #models, 1, -1 do
    if of_spec(models[i], ARGV[3]) then model = models[i]; break end
  end
end
if not model then
  if waiter ~= '' then wait_in_line(KEYS[7], KEYS[8], waiter, ARGV[3], tonumber(ARGV[13])) end
  return {'empty', ''}
end
if waiter ~= '' then leave_line(KEYS[7], KEYS[8], waiter) end
redis.call('LREM', KEYS[1], -1, model)
local id = cjson.decode(model)['id']
if slots then
  slots[id] = 0
  store_user_slots(KEYS[5], ARGV[1], slots)
end
local replica = nil
if ARGV[2] ~= '' then replica = ARGV[2] end
local claim = {model = model, user_id = ARGV[1], claimed_at = now, replica = replica}
redis.call('HSET', KEYS[2], id, cjson.encode(claim))
if idem then
  local record = {user_id = ARGV[1], owner = ARGV[4], kernel_id = id, request = ARGV[9]}
  redis.call('SET', idem, cjson.encode(record), 'PX', ARGV[5])
end
if alias ~= '' then reserve_alias(KEYS[3], alias, ARGV[7], ARGV[8]) end
return {'claimed', model}
