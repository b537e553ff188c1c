-- Whether kernel ``id`` is one of a registered pool's (in hash ``pools``) that no client
-- may reach. A plain find before decoding: most idle models do not hold the id at all.
local function unhanded(pools, id)
  for _, keys in ipairs(redis.call('HVALS', pools)) do
    keys = cjson.decode(keys)
    if redis.call('ZSCORE', keys['starting'], id)
       or (keys['late'] and redis.call('ZSCORE', keys['late'], id))
       or redis.call('HEXISTS', keys['claimed'], id) == 1
       or redis.call('HEXISTS', keys['retiring'], id) == 1 then
      return true
    end
    for _, model in ipairs(redis.call('LRANGE', keys['idle'], 0, -1)) do
      if string.find(model, id, 1, true) and cjson.decode(model)['id'] == id then return true end
    end
  end
  return false
end
