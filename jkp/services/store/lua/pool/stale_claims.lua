--- @include "includes/now"
local stale = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local claim = cjson.decode(entries[i + 1])
  if claim['claimed_at'] < now - tonumber(ARGV[1]) then
    table.insert(stale, entries[i])
    table.insert(stale, claim['model'])
  end
end
return stale
