-- Kernel id ARGV[1] as a request names it: {'bound', binding} when it is an alias (KEYS[1]),
-- {'unhanded', ''} when it is a pool's kernel no client may reach (KEYS[2]), else {'', ''}.
--- @include "includes/unhanded"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and cjson.decode(entry)['kernel_id'] then return {'bound', entry} end
if unhanded(KEYS[2], ARGV[1]) then return {'unhanded', ''} end
return {'', ''}
