-- The waiters' line of a pool (needs ``now``, and idle_of_spec from includes/of_spec). Two waiters
-- compete when their specs are equal or either is '' (any spec).
local function competes(a, b) return a == '' or b == '' or a == b end
local function waiters_ahead(line, untils, waiter, spec)
  local ahead = 0
  for _, id in ipairs(redis.call('ZRANGE', line, 0, -1)) do
    if id == waiter then break end
    local entry = redis.call('HGET', untils, id)
    entry = entry and cjson.decode(entry)
    if not entry or entry['until'] <= now then
      redis.call('ZREM', line, id)
      redis.call('HDEL', untils, id)
    elseif competes(entry['spec'], spec) then
      ahead = ahead + 1
    end
  end
  return ahead
end
local function wait_in_line(line, untils, waiter, spec, seconds)
  if not redis.call('ZSCORE', line, waiter) then redis.call('ZADD', line, now, waiter) end
  redis.call('HSET', untils, waiter, cjson.encode({['until'] = now + seconds, spec = spec}))
end
local function leave_line(line, untils, waiter)
  redis.call('ZREM', line, waiter)
  redis.call('HDEL', untils, waiter)
end
