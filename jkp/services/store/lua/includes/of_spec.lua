-- Whether an idle kernel's model is of spec SPEC: its "jkp_spec" fingerprint is SPEC, or it has
-- none (pooled before fingerprints, e.g. by the original service), or SPEC is '' (any).
local function of_spec(model, spec)
  local fingerprint = cjson.decode(model)['jkp_spec']
  return spec == '' or fingerprint == nil or fingerprint == spec
end
local function starting_of_spec(starting, specs, spec)
  local count = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', starting, '(' .. now, '+inf')) do
    local fingerprint = redis.call('HGET', specs, id)
    if spec == '' or not fingerprint or fingerprint == spec then count = count + 1 end
  end
  return count
end
local function idle_of_spec(idle, spec)
  if spec == '' then return redis.call('LLEN', idle) end
  local count = 0
  for _, model in ipairs(redis.call('LRANGE', idle, 0, -1)) do
    if of_spec(model, spec) then count = count + 1 end
  end
  return count
end
