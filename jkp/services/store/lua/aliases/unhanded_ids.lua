-- The ids of every registered pool's (KEYS[1]) kernels that no client may reach.
local ids = {}
for _, keys in ipairs(redis.call('HVALS', KEYS[1])) do
  keys = cjson.decode(keys)
  for _, model in ipairs(redis.call('LRANGE', keys['idle'], 0, -1)) do
    table.insert(ids, cjson.decode(model)['id'])
  end
  for _, id in ipairs(redis.call('ZRANGE', keys['starting'], 0, -1)) do table.insert(ids, id) end
  for _, id in ipairs(redis.call('HKEYS', keys['claimed'])) do table.insert(ids, id) end
  for _, id in ipairs(redis.call('HKEYS', keys['retiring'])) do table.insert(ids, id) end
  if keys['late'] then
    for _, id in ipairs(redis.call('ZRANGE', keys['late'], 0, -1)) do table.insert(ids, id) end
  end
end
return ids
