-- The specs (KEYS[2]: replica -> spec) that live replicas (KEYS[1]) run.
--- @include "includes/now"
--- @include "includes/dead"
local specs = {}
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  if not dead(KEYS[1], entries[i]) then table.insert(specs, entries[i + 1]) end
end
return specs
